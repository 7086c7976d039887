//! The retraining policy and the learner component that carries it out.
//!
//! Per pipeline: the first model is trained once `min_labels` labelled
//! samples are stored; a new one after every `retrain_every` further labels;
//! and whenever asked over the API. Each trains on [`training_parts`] of the
//! stored samples (the window and a reservoir of older ones; with
//! `reservoir_in_training = false` the reservoir only guards the promotion). Training runs on a blocking thread with a
//! cancellation token, one at a time; the result is promoted through the
//! [`Registry`] (verified by the engine before it serves).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{AlarmKind, MonitoredPipeline};
use crate::features::temporal::{Temporal, LABEL_LOOKBACK, WARM_READINGS};
use crate::ingest::decode::Sample;
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

/// A concept-drift alarm of a pipeline.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DriftAlarm {
    /// When it was raised, ms since the Unix epoch.
    pub at_ms: i64,
    /// The labelled sample whose error raised it.
    pub sample_seq: u64,
    /// The version whose errors were watched.
    pub serving_version: u32,
    /// Whether it triggered a training, and why (not).
    pub action: String,
}

/// Concept-drift state of one pipeline, for `GET /v1/pipelines/{name}/drift`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConceptDrift {
    /// The detector's state (reset when a new version starts serving).
    pub detector: serde_json::Value,
    /// The version whose errors the detector watches.
    pub serving_version: Option<u32>,
    /// Labelled samples scored since that version started serving, and the
    /// share it got wrong (a classifier).
    pub scored: u64,
    pub error_rate: Option<f64>,
    /// A regressor's mean absolute error |y − ŷ| over those samples, in the
    /// label's unit (absent for a classifier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_abs_error: Option<f64>,
    /// Every alarm, oldest first (kept in the store: it survives restarts).
    pub alarms: Vec<DriftAlarm>,
    /// Data-drift and anomaly alarms (kept in the store too).
    pub other: OtherAlarms,
}

/// Data-drift and anomaly alarms of a pipeline: counts since the store
/// began, and the newest 1,000 (the timeline keeps every one).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OtherAlarms {
    pub data_drift_alarms: u64,
    pub anomaly_alarms: u64,
    /// Oldest first.
    pub recent: Vec<OtherAlarm>,
}

/// A data-drift or anomaly alarm of a pipeline (timeline actions
/// `data_drift_alarm`, `anomaly_alarm`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OtherAlarm {
    pub kind: AlarmKind,
    /// When it was raised, ms since the Unix epoch.
    pub at_ms: i64,
    /// The version serving then.
    pub serving_version: Option<u32>,
    /// What was seen (drifted features and window; readings alarmed).
    pub reason: String,
    /// Whether it triggered a training, and why (not).
    pub action: String,
}

/// A pipeline's anomaly alarms on the timeline.
#[derive(Debug, Default)]
struct AnomalyEpisode {
    /// When the last anomaly alarm was raised.
    last: Option<std::time::Instant>,
}

/// Least time between two anomaly alarms of a pipeline (timeline events),
/// so a stream of anomalous readings cannot fill the timeline.
pub const ANOMALY_ALARM_GAP: std::time::Duration = std::time::Duration::from_secs(60);

fn other_alarms_key(pipeline: &str) -> String {
    format!("other_alarms/{pipeline}")
}

fn alarms_key(pipeline: &str) -> String {
    format!("drift_alarms/{pipeline}")
}

fn data_watch_key(pipeline: &str) -> String {
    format!("data_drift_watch/{pipeline}")
}

/// Where a pipeline's data-drift watch stands, kept in the store so that a
/// restart neither checks the same samples again nor raises the alarm of a
/// drift already reported ("one alarm when drift starts", across restarts).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct DataWatch {
    /// Next seq at the last check.
    checked: u64,
    /// The version serving at the last check, and whether that window drifted.
    version: u32,
    drifting: bool,
}

/// Concept-drift states of every pipeline, shared with the HTTP API.
pub type DriftBoard = Arc<std::sync::Mutex<HashMap<String, ConceptDrift>>>;

struct Watch {
    version: u32,
    detector: Box<dyn super::detectors::DriftDetector>,
    scored: u64,
    /// Sum of the error stream: wrong predictions, or absolute errors.
    errors: f64,
}

/// The learner component.
pub struct Learner {
    /// Next sample seq to score per pipeline, and the detector watching the
    /// serving version's errors.
    cursor: HashMap<String, u64>,
    watch: HashMap<String, Watch>,
    /// Seqs of samples that received a late label (from the writer).
    late_rx: mpsc::Receiver<(String, Vec<u64>)>,
    /// When each pipeline last trained (schedule trigger).
    last_training: HashMap<String, std::time::Instant>,
    /// Pipelines with an alarm waiting for the cool-down to end, and the
    /// trigger the training will carry.
    deferred: HashMap<String, Trigger>,
    /// Anomaly alarm episodes of each pipeline at the last look
    /// (`learn::anomaly::Scored::episode`, counted by the scorers).
    anomaly: Option<crate::serve::predictions::AnomalyScorers>,
    anomaly_seen: HashMap<String, u64>,
    /// Per pipeline: when the last anomaly alarm was raised.
    anomaly_episode: HashMap<String, AnomalyEpisode>,
    /// Next seq at the last data-drift check, and whether that window
    /// drifted (for the version then serving): one alarm when drift starts.
    data_checked: HashMap<String, u64>,
    data_drifting: HashMap<String, (u32, bool)>,
    board: DriftBoard,
    /// The live tallies over time, for the dashboard's accuracy plots.
    series: super::series::SeriesBook,
    store: Arc<Store>,
    registry: Arc<Registry>,
    pipelines: Vec<MonitoredPipeline>,
    labels_added: Arc<Notify>,
    rx: mpsc::Receiver<TrainRequest>,
    stats: Arc<Stats>,
    /// Labelled total at the last attempt, per pipeline (success or not).
    attempted_at: HashMap<String, u64>,
    /// Online learners (`[pipelines.online]`), by pipeline; taken out while
    /// a step runs on a blocking thread.
    online: HashMap<String, super::online::OnlineLearner>,
    /// Live scoring's temporal state of each pipeline with temporal
    /// features, and the seq it expects next (a gap rebuilds it).
    temporal: HashMap<String, (Temporal, u64)>,
    /// Newly promoted versions on probation (`model.probation_labels`).
    probation: HashMap<String, Probation>,
    /// Models offered by the fleet (`[fleet] adopt`).
    fleet: Option<FleetIntake>,
}

/// The learner's side of `[fleet] adopt`.
pub struct FleetIntake {
    pub offers: mpsc::Receiver<crate::serve::fleet::Offer>,
    /// How models load (the onnxruntime library of `[onnxruntime]`).
    pub options: crate::serve::engine::LoadOptions,
    /// `[models] max_bytes`.
    pub max_model_bytes: u64,
    /// The newest model of each pipeline that came before it had labelled
    /// samples to judge it on: judged when labelled samples arrive.
    pub waiting: HashMap<String, crate::serve::fleet::Offer>,
}

/// The next fleet offer; never, without `[fleet] adopt`.
async fn next_offer(fleet: &mut Option<FleetIntake>) -> Option<crate::serve::fleet::Offer> {
    match fleet {
        Some(f) => f.offers.recv().await,
        None => std::future::pending().await,
    }
}

/// A promoted version and the champion it replaced, both predicting each
/// new labelled sample before its label is known: their prequential
/// records since the promotion, as sums of errors (0/1 for a classifier,
/// |y − ŷ| for a regressor).
struct Probation {
    version: u32,
    former: Arc<crate::serve::registry::Serving>,
    scored: u64,
    errors: f64,
    former_errors: f64,
}

/// Why an automatic training of `p` (on an alarm, or one deferred) waits,
/// as the alarm's action says it; `None`: it may train now. A version made
/// elsewhere (uploaded, adopted from the fleet) may serve before the
/// pipeline has the `model.min_labels` labelled samples its own first model
/// needs; until then no training runs, and an alarm waits as it does
/// through the cool-down.
fn wait_reason(p: &MonitoredPipeline, labelled: u64, since: u64) -> Option<String> {
    if labelled < p.model.min_labels {
        Some(format!(
            "deferred: {labelled} of {} labelled samples (model.min_labels)",
            p.model.min_labels
        ))
    } else if since < p.drift.cooldown_labels {
        Some(format!(
            "deferred: cool-down ({since} of {} labels since the last training)",
            p.drift.cooldown_labels
        ))
    } else {
        None
    }
}

/// Whether sample `seq`, new since the learner's last step (`from` on),
/// was in the training data of a version trained up to `trained_to` (its
/// card's `last_seq`; `None` for a version made elsewhere). Such samples
/// are not a live test of the version: when it was trained and promoted
/// between two steps, the next step would otherwise score it on them. Late
/// labels of older samples (`seq < from`) are scored.
fn trained_on(seq: u64, from: u64, trained_to: Option<u64>) -> bool {
    seq >= from && trained_to.is_some_and(|t| seq <= t)
}

/// Whether a former champion with `former_errors` did better than the
/// version on probation with `errors`, over `scored` samples both predicted,
/// by more than [`learn::settings::PROBATION_MARGIN`]: in accuracy points
/// for a classifier (errors counted 0/1), as a share of the mean absolute
/// error for a regressor.
fn former_wins(scored: u64, errors: f64, former_errors: f64, regression: bool) -> bool {
    // Compared on the sums (a 1e-9 slack for their rounding): exactly the
    // margin is within it.
    let margin = learn::settings::PROBATION_MARGIN;
    if regression {
        former_errors < errors * (1.0 - margin) - 1e-9
    } else {
        errors - former_errors > margin * scored as f64 + 1e-9
    }
}

/// The labelled rows of a temporal pipeline (`[pipelines.temporal]`), in
/// seq order: every stored reading, labelled or not, is read in chunks and
/// advances its device's history ([`Temporal::advance`], after the cleaning
/// rules), and each labelled one keeps its row.
///
/// # Errors
/// [`StoreError`] of a scan.
pub fn temporal_labelled(
    store: &Store,
    p: &learn::PipelineSettings,
) -> Result<Vec<(u64, Sample)>, StoreError> {
    Ok(temporal_parts(store, p, 0, 0, 0, &mut 0)?.1)
}

/// The training parts of a temporal pipeline, `(reservoir, window)` rows
/// with their seqs, as [`training_parts`] cuts them from
/// [`temporal_labelled`] (the same labelled samples: the newest `window`,
/// every one when 0, and [`crate::store::reservoir_pick`]'s seeded pick of
/// `reservoir` older ones, in time order), without forming the row of
/// every stored reading: with `window` set, only the labelled seqs are held
/// while choosing (8 bytes each, [`Store::labelled_seqs`]), and the rows
/// are formed by [`temporal_late_rows`], each from the readings stored
/// before it, from at least [`WARM_READINGS`] before it, a device whose
/// past lies further back completed with its own readings before those
/// (as live scoring forms its rows after a restart, [`temporal_warm`]), so
/// that the rows equal those of every stored reading. A training's rows are
/// then at most `window + reservoir`, whatever the store holds; and
/// `readings` counts the stored readings read to form them. With `window`
/// 0, every row from the first reading, as before.
///
/// # Errors
/// [`StoreError`] of a scan.
#[allow(clippy::type_complexity)]
pub fn temporal_parts(
    store: &Store,
    p: &learn::PipelineSettings,
    window: usize,
    reservoir: usize,
    seed: u64,
    readings: &mut u64,
) -> Result<(Vec<(u64, Sample)>, Vec<(u64, Sample)>), StoreError> {
    if window == 0 {
        let next = store.counts(&p.name)?.next_seq;
        let mut out = Vec::new();
        *readings += temporal_scan(store, p, 0..next, |_| true, &mut out)?;
        return Ok((Vec::new(), out));
    }
    let seqs = store.labelled_seqs(&p.name)?;
    let (older, recent) = seqs.split_at(seqs.len().saturating_sub(window));
    // Each picked seq and its place in the pick.
    let picked: Vec<(u64, usize)> = if older.len() > reservoir {
        crate::store::reservoir_pick(older.len(), reservoir, seed)
            .into_iter()
            .enumerate()
            .map(|(k, i)| (older[i], k))
            .collect()
    } else {
        older.iter().enumerate().map(|(k, &seq)| (seq, k)).collect()
    };
    let mut reservoir_part = temporal_late_rows(
        store,
        p,
        picked.iter().map(|(seq, _)| *seq).collect(),
        readings,
    )?;
    if older.len() > reservoir {
        // In time order, ties in pick order, as `training_parts` orders them.
        let place: std::collections::HashMap<u64, usize> = picked.into_iter().collect();
        reservoir_part.sort_by_key(|(seq, s)| (s.timestamp_ms, place.get(seq).copied()));
    }
    let window_part = temporal_late_rows(store, p, recent.to_vec(), readings)?;
    Ok((reservoir_part, window_part))
}

/// The rows of the stored readings of `range`, from a fresh history: each
/// reading (after the cleaning rules) advances its device's history, and
/// the labelled ones whose seq `keep` accepts are pushed to `out` with
/// their rows. Read in chunks of 10,000 ([`temporal_chunks`]); returns how
/// many readings were read.
fn temporal_scan(
    store: &Store,
    p: &learn::PipelineSettings,
    range: std::ops::Range<u64>,
    keep: impl Fn(u64) -> bool,
    out: &mut Vec<(u64, Sample)>,
) -> Result<u64, StoreError> {
    let mut read = 0;
    for chunk in temporal_chunks(store, p, range, 10_000, keep) {
        let (n, rows) = chunk?;
        read += n;
        out.extend(rows);
    }
    Ok(read)
}

/// [`temporal_scan`] a chunk at a time, through one history: for each
/// `chunk` stored readings of `range` read in seq order, how many were read
/// and the rows of the labelled ones `keep` accepts. The online learner
/// relearns a temporal pipeline's rows this way at start, holding a chunk's
/// rows at a time, not one for every labelled reading stored.
fn temporal_chunks<'a>(
    store: &'a Store,
    p: &'a learn::PipelineSettings,
    range: std::ops::Range<u64>,
    chunk: usize,
    keep: impl Fn(u64) -> bool + 'a,
) -> impl Iterator<Item = Result<(u64, Vec<(u64, Sample)>), StoreError>> + 'a {
    let mut t = Temporal::new(p.temporal.clone(), p.features.len(), p.classes.len());
    let cleaning = p.model.preprocess.cleaning();
    let (mut from, mut scratch) = (range.start, Vec::new());
    // The devices whose past before the range was read.
    let mut filled = std::collections::HashSet::new();
    std::iter::from_fn(move || {
        if from >= range.end {
            return None;
        }
        let read = match store.scan(&p.name, from..range.end, chunk.max(1)) {
            Ok(read) => read,
            Err(e) => {
                from = range.end;
                return Some(Err(e));
            }
        };
        from = match read.last() {
            Some((seq, _)) => seq + 1,
            None => range.end,
        };
        let mut n = read.len() as u64;
        let mut rows = Vec::new();
        for (seq, mut r) in read {
            cleaning.apply(&p.features, &mut r.sample.features);
            let kept = r.sample.label.is_some() && keep(seq);
            if kept && range.start > 0 && !filled.contains(&r.sample.device) {
                match backfill(store, p, range.start, &cleaning, &mut t, &r.sample) {
                    Ok(read) => n += read,
                    Err(e) => {
                        from = range.end;
                        return Some(Err(e));
                    }
                }
                filled.insert(r.sample.device.clone());
            }
            let features = t.advance(&r.sample, &p.classes, &mut scratch);
            if kept {
                rows.push((
                    seq,
                    Sample {
                        features,
                        ..r.sample
                    },
                ));
            }
        }
        Some(Ok((n, rows)))
    })
}

/// The stored readings that rebuild a temporal pipeline's state at seq
/// `from` (the daemon's serving state at start, live scoring after a gap),
/// in seq order, to be advanced in that order (after the cleaning rules):
/// the newest [`WARM_READINGS`] before `from`, preceded by the past these
/// lack of each of the `cfg.max_devices` devices heard most recently
/// ([`Store::recent_devices`]): its newest readings before them, as many
/// as its rows reach for beyond those it has in the range
/// ([`TemporalConfig::history`](crate::features::temporal::TemporalConfig::history)),
/// and, with `last_label` and none labelled among them, its last labelled
/// reading within [`LABEL_LOOKBACK`] more of its own
/// ([`Store::newest_of_device_before`], the time index). A quiet device
/// whose previous reading lies far back thus gets its lags, rolling
/// statistics and last label as the live state kept them. At most
/// `WARM_READINGS + max_devices × (history + 1)` readings.
///
/// # Errors
/// [`StoreError`] of a read.
pub fn temporal_warm(
    store: &Store,
    pipeline: &str,
    cfg: &crate::features::temporal::TemporalConfig,
    classes: &[String],
    from: u64,
) -> Result<Vec<(u64, crate::store::StoredSample)>, StoreError> {
    let start = from.saturating_sub(WARM_READINGS);
    let scanned = store.scan(pipeline, start..from, usize::MAX)?;
    let history = cfg.history();
    let wants_label = cfg.last_label && !classes.is_empty();
    if start == 0 || (history == 0 && !wants_label) {
        return Ok(scanned);
    }
    // Per device in the range: its readings, and whether one has a label
    // of `classes` (its last label then comes from the range).
    let mut seen: HashMap<&str, (usize, bool)> = HashMap::new();
    for (_, r) in &scanned {
        let e = seen.entry(r.sample.device.as_str()).or_default();
        e.0 += 1;
        e.1 |= r.sample.label.as_ref().is_some_and(|l| classes.contains(l));
    }
    let mut out = Vec::new();
    for (device, _) in store.recent_devices(pipeline, cfg.max_devices)? {
        let (count, labelled) = seen.get(device.as_str()).copied().unwrap_or_default();
        let need = history.saturating_sub(count);
        let lookback = if wants_label && !labelled {
            LABEL_LOOKBACK
        } else {
            0
        };
        if need == 0 && lookback == 0 {
            continue;
        }
        out.extend(store.newest_of_device_before(
            pipeline,
            &device,
            start,
            i64::MAX,
            need,
            lookback,
        )?);
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    out.extend(scanned);
    Ok(out)
}

/// Completes the past of reading `s`'s device in `t`, when `t` lacks
/// what its row reaches for ([`Temporal::missing_past`]), with the
/// device's own readings before seq `before` (the range being scanned),
/// read from the time index from `s`'s timestamp back
/// ([`Store::newest_of_device_before`]), cleaned as the scanned ones: its
/// row is then the one formed from the device's whole history, as the
/// live state had it. Returns how many readings were read.
fn backfill(
    store: &Store,
    p: &learn::PipelineSettings,
    before: u64,
    cleaning: &learn::clean::Cleaning,
    t: &mut Temporal,
    s: &Sample,
) -> Result<u64, StoreError> {
    let (need, label) = t.missing_past(&s.device);
    if need == 0 && !label {
        return Ok(0);
    }
    let lookback = if label { LABEL_LOOKBACK } else { 0 };
    let mut older = store.newest_of_device_before(
        &p.name,
        &s.device,
        before,
        s.timestamp_ms,
        need,
        lookback,
    )?;
    for (_, r) in &mut older {
        cleaning.apply(&p.features, &mut r.sample.features);
    }
    let refs: Vec<&Sample> = older.iter().map(|(_, r)| &r.sample).collect();
    t.backfill(&s.device, &refs, &p.classes);
    Ok(older.len() as u64)
}

/// Live scoring's rows of a temporal pipeline: `rows` (the samples of
/// `from..`, every one, in seq order) become their temporal rows through
/// `state`, which is first rebuilt from the stored readings before `from`
/// ([`temporal_warm`]: the newest [`WARM_READINGS`] and the past of the
/// devices they lack) when it did not end there.
fn temporal_rows(
    store: &Store,
    p: &learn::PipelineSettings,
    state: &mut (Temporal, u64),
    from: u64,
    rows: &mut [(u64, crate::store::StoredSample)],
) -> Result<(), StoreError> {
    let cleaning = p.model.preprocess.cleaning();
    let mut scratch = Vec::new();
    if state.1 != from {
        state.0 = Temporal::new(p.temporal.clone(), p.features.len(), p.classes.len());
        for (_, mut r) in temporal_warm(store, &p.name, &p.temporal, &p.classes, from)? {
            cleaning.apply(&p.features, &mut r.sample.features);
            state.0.advance(&r.sample, &p.classes, &mut scratch);
        }
    }
    for (seq, r) in rows.iter_mut() {
        cleaning.apply(&p.features, &mut r.sample.features);
        r.sample.features = state.0.advance(&r.sample, &p.classes, &mut scratch);
        state.1 = *seq + 1;
    }
    if state.1 < from {
        state.1 = from;
    }
    Ok(())
}

/// The rows of a temporal pipeline's samples `seqs` (labelled late, older
/// than what the live state has passed; or a training's, [`temporal_parts`]),
/// each formed from the readings stored before it, from at least
/// [`WARM_READINGS`] before it, with the labels as stored now; a device that
/// lacks the past its row reaches for in that scan gets its own readings
/// before it ([`backfill`], at most `history` and its last labelled one
/// within [`LABEL_LOOKBACK`]), so a quiet device's row is the one its whole
/// history gives (as long as at most `max_devices` devices come between).
/// Seqs more than that apart are formed
/// from separate scans, so one label from long ago costs one warm-up, not a
/// scan of everything since. Returns the labelled ones in seq order; adds
/// the readings read to `readings`.
fn temporal_late_rows(
    store: &Store,
    p: &learn::PipelineSettings,
    mut seqs: Vec<u64>,
    readings: &mut u64,
) -> Result<Vec<(u64, Sample)>, StoreError> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        // One scan for the late seqs within WARM_READINGS of each other.
        let mut j = i + 1;
        while j < seqs.len() && seqs[j] - seqs[j - 1] <= WARM_READINGS {
            j += 1;
        }
        let group = &seqs[i..j];
        let range = group[0].saturating_sub(WARM_READINGS)..group[group.len() - 1] + 1;
        *readings += temporal_scan(
            store,
            p,
            range,
            |seq| group.binary_search(&seq).is_ok(),
            &mut out,
        )?;
        i = j;
    }
    Ok(out)
}

fn new_watch(p: &MonitoredPipeline, version: u32) -> Watch {
    let detector = p.drift.new_detector();
    Watch {
        version,
        detector,
        scored: 0,
        errors: 0.0,
    }
}

/// The newest `window` samples (all when 0) plus a uniform sample of
/// `reservoir` older ones, chosen with a seed so that a retry picks the same:
/// [`training_parts`] joined, oldest first.
pub fn training_set(
    labelled: Vec<Sample>,
    window: usize,
    reservoir: usize,
    seed: u64,
) -> Vec<Sample> {
    let (mut older, recent) = training_parts(labelled, window, reservoir, seed);
    older.extend(recent);
    older
}

/// The training set in its two parts: (reservoir, window). The window is the
/// newest `window` samples (all when 0, with an empty reservoir); the
/// reservoir a seeded uniform sample of `reservoir` older ones, in time
/// order. `labelled` is in time order.
pub fn training_parts(
    mut labelled: Vec<Sample>,
    window: usize,
    reservoir: usize,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    if window == 0 || labelled.len() <= window {
        return (Vec::new(), labelled);
    }
    let recent = labelled.split_off(labelled.len() - window);
    let mut older = labelled;
    if older.len() > reservoir {
        let mut slots: Vec<Option<Sample>> = older.into_iter().map(Some).collect();
        older = crate::store::reservoir_pick(slots.len(), reservoir, seed)
            .into_iter()
            .filter_map(|i| slots[i].take())
            .collect();
        older.sort_by_key(|s| s.timestamp_ms);
    }
    (older, recent)
}

/// The error stream the concept-drift detector watches, one value per
/// labelled row: for a classifier 1.0 when the predicted class (the argmax of
/// `outputs`, `[n, n_classes]` row-major) is not the label, else 0.0 (the
/// Bernoulli stream of DDM, ADWIN and Page-Hinkley); for a regressor the
/// absolute error |y − ŷ| (`outputs` `[n]`), a real-valued stream for ADWIN
/// or Page-Hinkley (DDM is refused by config for regression). `None` where a
/// regressor's label or prediction is not a finite number (the row is not
/// scored: one NaN or infinity in a detector's sums would silence it).
pub fn prediction_errors(
    task: learn::Task,
    classes: &[String],
    outputs: &[f32],
    labels: &[&str],
) -> Vec<Option<f64>> {
    match task {
        learn::Task::Regression => labels
            .iter()
            .zip(outputs)
            .map(|(y, p)| {
                let y = y.trim().parse::<f64>().ok().filter(|y| y.is_finite())?;
                Some((y - f64::from(*p)).abs()).filter(|e| e.is_finite())
            })
            .collect(),
        learn::Task::Classification => crate::learn::logistic::argmax_rows(outputs, classes.len())
            .into_iter()
            .zip(labels)
            .map(|(k, y)| Some(if classes[k] == *y { 0.0 } else { 1.0 }))
            .collect(),
    }
}

/// What a training (or the judging of a fleet model) of a pipeline sees.
struct TrainingData {
    /// Labelled samples stored when it started.
    labelled_total: u64,
    /// The newest sample it sees: the end of the data-drift reference.
    last_seq: Option<u64>,
    /// The samples it trains on (holdout included).
    samples: Vec<Sample>,
    /// With `reservoir_in_training = false`: the reservoir, held out as the
    /// older regimes of the champion/challenger decision.
    old_regimes: Option<Vec<Sample>>,
}

/// [`training_parts`] of the pipeline's labelled samples (a temporal
/// pipeline's rows formed from the readings before each,
/// [`temporal_parts`]).
fn training_data(store: &Store, cfg: &MonitoredPipeline) -> Result<TrainingData, StoreError> {
    let labelled_total = store.counts(&cfg.name)?.labelled_total;
    let strip = |v: Vec<(u64, Sample)>| v.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    let (last_seq, mut samples, recent) = if cfg.temporal.is_enabled() {
        let (older, recent) = temporal_parts(
            store,
            &cfg.settings,
            cfg.model.window,
            cfg.model.reservoir,
            labelled_total,
            &mut 0,
        )?;
        let last_seq = recent.last().or(older.last()).map(|(seq, _)| *seq);
        (last_seq, strip(older), strip(recent))
    } else {
        // The same parts, without decoding every labelled sample first. A
        // windowed pipeline's windows are formed from the newest `window`
        // readings alone: older ones drawn at random would cut them.
        let reservoir = if cfg.windows.enabled {
            0
        } else {
            cfg.model.reservoir
        };
        let (older, recent) =
            store.labelled_parts(&cfg.name, cfg.model.window, reservoir, labelled_total)?;
        let last_seq = recent.last().or(older.last()).map(|(seq, _)| *seq);
        (last_seq, strip(older), strip(recent))
    };
    // `reservoir_in_training = false`: the reservoir is only the
    // older-regime holdout of the champion/challenger decision.
    let old_regimes = if cfg.model.reservoir_in_training {
        samples.extend(recent);
        None
    } else {
        Some(std::mem::replace(&mut samples, recent))
    };
    Ok(TrainingData {
        labelled_total,
        last_seq,
        samples,
        old_regimes,
    })
}

/// The champion a challenger of `pipeline` must beat (the online
/// learner's batch version when it has one, else the serving version) and
/// the one a promoted challenger puts on probation (the serving version;
/// none with an online learner). `online`: the online learner's batch
/// version and whether it serves.
#[allow(clippy::type_complexity)]
fn champion_and_former(
    registry: &Registry,
    pipeline: &str,
    online: &Option<(Option<Arc<crate::serve::registry::Serving>>, bool)>,
) -> (
    Option<Arc<crate::serve::registry::Serving>>,
    Option<Arc<crate::serve::registry::Serving>>,
) {
    let serving = match online {
        Some((batch, _)) => batch.clone(),
        None => registry.get(pipeline),
    };
    let former = if online.is_none() {
        serving.clone()
    } else {
        None
    };
    (serving, former)
}

/// Stored samples the online learner's relearning reads at a time.
const RELEARN_CHUNK: usize = 10_000;

/// The labelled samples of `pipeline` stored when called, in seq order, in
/// chunks of those among `chunk` stored samples (the online learner
/// relearns them at start without holding every one: a store of a million
/// labelled samples was read whole first).
///
/// # Errors
/// [`StoreError`] when the counters cannot be read; each chunk carries its
/// own read's error.
fn labelled_chunks<'a>(
    store: &'a Store,
    pipeline: &'a str,
    chunk: usize,
) -> Result<impl Iterator<Item = Result<Vec<(u64, Sample)>, StoreError>> + 'a, StoreError> {
    let end = store.counts(pipeline)?.next_seq;
    let mut from = 0;
    Ok(std::iter::from_fn(move || {
        if from >= end {
            return None;
        }
        let read = match store.scan(pipeline, from..end, chunk.max(1)) {
            Ok(read) => read,
            Err(e) => {
                from = end;
                return Some(Err(e));
            }
        };
        from = match read.last() {
            Some((seq, _)) => seq + 1,
            None => end,
        };
        Some(Ok(read
            .into_iter()
            .filter(|(_, r)| r.sample.label.is_some())
            .map(|(seq, r)| (seq, r.sample))
            .collect()))
    }))
}

/// Labelled samples a fleet model waits for before it is judged: as many as
/// the pipeline's own first model (`model.min_labels`), and at least 2.
fn judging_needs(cfg: &MonitoredPipeline) -> u64 {
    cfg.model.min_labels.max(2)
}

/// The serving version's parameters, when edgeloop trained it (a warm
/// start, and the champion as trained).
fn champion_params(
    store: &Store,
    pipeline: &str,
    serving: Option<&Arc<crate::serve::registry::Serving>>,
) -> Option<learn::Model> {
    serving
        .and_then(|s| store.get_model(pipeline, s.version).ok()?)
        .and_then(|m| learn::Model::from_json(&m.params_json))
}

/// The champion a challenger must beat: its parameters when edgeloop
/// trained it, else (an imported model) the engine serving it, scored on
/// the same holdout.
fn champion<'a>(
    serving: &'a crate::serve::registry::Serving,
    params: Option<&'a learn::Model>,
) -> (u32, learn::Champion<'a>) {
    let champion = match params {
        Some(m) => learn::Champion::Trained(m),
        None => learn::Champion::Served(&serving.model),
    };
    (serving.version, champion)
}

fn trained_key(pipeline: &str) -> String {
    format!("trained_labels/{pipeline}")
}

impl Learner {
    /// A learner and the handle that reaches it.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        pipelines: Vec<MonitoredPipeline>,
        labels_added: Arc<Notify>,
        late_rx: mpsc::Receiver<(String, Vec<u64>)>,
        stats: Arc<Stats>,
    ) -> (Self, LearnerHandle) {
        let (tx, rx) = mpsc::channel(16);
        // The alarm history of each pipeline, from before a restart.
        let board = DriftBoard::default();
        if let Ok(mut b) = board.lock() {
            for p in &pipelines {
                let alarms: Vec<DriftAlarm> = store
                    .get_state(&alarms_key(&p.name))
                    .ok()
                    .flatten()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                if !alarms.is_empty() {
                    b.entry(p.name.clone()).or_default().alarms = alarms;
                }
                let other: Option<OtherAlarms> = store
                    .get_state(&other_alarms_key(&p.name))
                    .ok()
                    .flatten()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                if let Some(other) = other {
                    b.entry(p.name.clone()).or_default().other = other;
                }
            }
        }
        // Where each data-drift watch stood before a restart.
        let mut data_checked = HashMap::new();
        let mut data_drifting = HashMap::new();
        for p in &pipelines {
            let watch: Option<DataWatch> = store
                .get_state(&data_watch_key(&p.name))
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(w) = watch {
                data_checked.insert(p.name.clone(), w.checked);
                data_drifting.insert(p.name.clone(), (w.version, w.drifting));
            }
        }
        let learner = Self {
            late_rx,
            cursor: HashMap::new(),
            watch: HashMap::new(),
            deferred: Default::default(),
            anomaly: None,
            anomaly_seen: HashMap::new(),
            anomaly_episode: HashMap::new(),
            data_checked,
            data_drifting,
            last_training: HashMap::new(),
            board,
            series: Default::default(),
            store,
            registry,
            pipelines,
            labels_added,
            rx,
            stats,
            attempted_at: HashMap::new(),
            online: HashMap::new(),
            temporal: HashMap::new(),
            probation: HashMap::new(),
            fleet: None,
        };
        (learner, LearnerHandle { tx })
    }

    /// Records each scored batch's live tally into `series` (the
    /// dashboard's accuracy over time; without it, into a book of its own
    /// that nobody reads).
    pub fn with_series(mut self, series: super::series::SeriesBook) -> Self {
        self.series = series;
        self
    }

    /// Watches these anomaly scorers' alarms (the predictor's): each look
    /// that finds new ones is an anomaly alarm.
    pub fn with_anomaly(mut self, scorers: crate::serve::predictions::AnomalyScorers) -> Self {
        self.anomaly = Some(scorers);
        self
    }

    /// Judges the models of `[fleet] adopt` ([`Learner::adopt`]).
    pub fn with_fleet(mut self, fleet: FleetIntake) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The concept-drift board this learner keeps up to date.
    pub fn board(&self) -> DriftBoard {
        self.board.clone()
    }

    /// Runs until `shutdown`; a training in progress is cancelled.
    ///
    /// # Errors
    /// [`TrainFailure::Store`] when the store cannot be read (the daemon stops).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TrainFailure> {
        for p in &self.pipelines {
            let at = self.trained_at(&p.name)?;
            self.attempted_at.insert(p.name.clone(), at);
            // Watch what arrives from now on.
            self.cursor
                .insert(p.name.clone(), self.store.counts(&p.name)?.next_seq);
        }
        if let Some(a) = &self.anomaly {
            self.anomaly_seen = a
                .totals()
                .into_iter()
                .map(|(n, t)| (n, t.episodes))
                .collect();
        }
        self.start_online().await?;
        self.check_all(&shutdown).await?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Online learners snapshot by time as well (`snapshot_every_s`).
        let scheduled =
            self.pipelines.iter().any(|p| p.model.schedule_s > 0) || !self.online.is_empty();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    // Unlabelled samples do not wake the learner: data drift
                    // and anomaly alarms are looked for on the tick.
                    let r = self.watch_alarms(&shutdown).await;
                    self.survive(r)?;
                    if scheduled {
                        let names: Vec<String> = self.online.keys().cloned().collect();
                        for name in names {
                            let r = self.online_step(&name, Vec::new(), 0..0, None).await;
                            self.survive(r)?;
                        }
                        let r = self.check_all(&shutdown).await;
                        self.survive(r)?;
                    }
                }
                _ = self.labels_added.notified() => {
                    let r = self.judge_waiting().await;
                    self.survive(r)?;
                    let r = self.watch_all(&shutdown).await;
                    self.survive(r)?;
                    let r = self.watch_alarms(&shutdown).await;
                    self.survive(r)?;
                    let r = self.check_all(&shutdown).await;
                    self.survive(r)?;
                }
                Some(offer) = next_offer(&mut self.fleet) => {
                    let r = self.adopt(offer, false).await;
                    self.survive(r)?;
                }
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

    /// A store that fails (a full disk, an I/O error) does not stop the
    /// learner: the error is logged and the next labels or tick try again
    /// (the store reopens itself after an I/O error). Other failures stop it.
    fn survive(&self, r: Result<(), TrainFailure>) -> Result<(), TrainFailure> {
        match r {
            Err(TrainFailure::Store(e)) => {
                warn!(error = %e, "The learner could not use the store; it tries again with the next labels.");
                Ok(())
            }
            other => other,
        }
    }

    fn trained_at(&self, pipeline: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get_state(&trained_key(pipeline))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Scores the newly labelled samples of each pipeline with its serving
    /// version, feeds the errors to the concept-drift detector, and trains
    /// on an alarm outside the cool-down.
    async fn watch_all(&mut self, shutdown: &CancellationToken) -> Result<(), TrainFailure> {
        // Samples labelled late (older seqs), by pipeline.
        let mut late: HashMap<String, Vec<u64>> = HashMap::new();
        while let Ok((pipeline, seqs)) = self.late_rx.try_recv() {
            late.entry(pipeline).or_default().extend(seqs);
        }
        for i in 0..self.pipelines.len() {
            let p = self.pipelines[i].clone();
            let next = self.store.counts(&p.name)?.next_seq;
            let from = self.cursor.insert(p.name.clone(), next).unwrap_or(next);
            let late_seqs: Vec<u64> = late
                .remove(&p.name)
                .unwrap_or_default()
                .into_iter()
                .filter(|s| *s < from)
                .collect();
            // A temporal pipeline's new samples become their rows once, for
            // the online learner and live scoring alike; its late labels'
            // rows are formed from the readings stored before each
            // ([`temporal_late_rows`]) and come first.
            let (late_seqs, derived) = if p.temporal.is_enabled() {
                // Only when something reads them: a skipped range leaves a
                // gap, and the next step rebuilds the state from the store.
                let used =
                    self.online.contains_key(&p.name) || self.registry.get(&p.name).is_some();
                let mut rows = None;
                if used && !late_seqs.is_empty() {
                    let (store, settings) = (self.store.clone(), p.settings.clone());
                    let late = tokio::task::spawn_blocking(move || {
                        temporal_late_rows(&store, &settings, late_seqs, &mut 0)
                    })
                    .await
                    .map_err(|e| TrainFailure::Training {
                        pipeline: p.name.clone(),
                        reason: format!("temporal rows: {e}"),
                    })??;
                    rows = Some(late);
                }
                if from < next && used {
                    let new = self.temporal_step(&p, from..next).await?;
                    rows.get_or_insert_with(Vec::new).extend(new);
                }
                (Vec::new(), rows)
            } else {
                (late_seqs, None)
            };
            let pending = from < next || !late_seqs.is_empty() || derived.is_some();
            if self.online.contains_key(&p.name) && pending {
                self.online_step(&p.name, late_seqs.clone(), from..next, derived.clone())
                    .await?;
            }
            let Some(serving) = self.registry.get(&p.name) else {
                continue;
            };
            if p.windows.enabled {
                // The model takes window statistics, not one reading: late
                // labels of single readings are not scored, and concept
                // drift is not watched (counted retraining still runs).
                continue;
            }
            if !pending {
                continue;
            }
            // A version on probation: its former champion predicts the same
            // rows (a version served by anyone else ends the probation).
            if self
                .probation
                .get(&p.name)
                .is_some_and(|b| b.version != serving.version)
            {
                self.probation.remove(&p.name);
            }
            let former = self.probation.get(&p.name).map(|b| b.former.clone());
            let store = self.store.clone();
            let name = p.name.clone();
            let model = serving.clone();
            // Score on a blocking thread: a store scan and an ONNX run.
            let scored = tokio::task::spawn_blocking(
                move || -> Result<(Vec<(u64, f64)>, Option<(u64, f64, f64)>), StoreError> {
                    let rows = match derived {
                        Some(rows) => rows,
                        None => {
                            let mut rows = Vec::new();
                            for seq in late_seqs {
                                rows.extend(store.scan(&name, seq..seq + 1, 1)?);
                            }
                            rows.extend(store.scan(&name, from..next, usize::MAX)?);
                            rows.into_iter()
                                .filter(|(_, r)| r.sample.label.is_some())
                                .map(|(seq, r)| (seq, r.sample))
                                .collect()
                        }
                    };
                    // The new samples the serving version was trained on
                    // (labelled after the last step, trained on before this
                    // one, promoted in between) are not a live test of it:
                    // neither its live accuracy nor the detector sees them.
                    let trained_to = model.card.last_seq;
                    let rows: Vec<_> = rows
                        .into_iter()
                        .filter(|(seq, _)| !trained_on(*seq, from, trained_to))
                        .collect();
                    if rows.is_empty() {
                        return Ok((Vec::new(), None));
                    }
                    let x: Vec<f32> = rows
                        .iter()
                        .flat_map(|(_, s)| s.features.iter().copied())
                        .collect();
                    let Ok(proba) = model.model.predict_proba(&x) else {
                        return Ok((Vec::new(), None));
                    };
                    let labels: Vec<&str> = rows
                        .iter()
                        .map(|(_, s)| s.label.as_deref().unwrap_or_default())
                        .collect();
                    let errors = prediction_errors(
                        model.model.task(),
                        model.model.classes(),
                        &proba,
                        &labels,
                    );
                    // The former champion's record on the rows both scored
                    // that came after the new version's training data (the
                    // ones before it were no test for it).
                    let probation = former.and_then(|f| {
                        let proba = f.model.predict_proba(&x).ok()?;
                        let theirs =
                            prediction_errors(f.model.task(), f.model.classes(), &proba, &labels);
                        let trained_to = model.card.last_seq.unwrap_or(0);
                        let both = rows
                            .iter()
                            .zip(errors.iter().zip(&theirs))
                            .filter(|((seq, _), _)| *seq > trained_to)
                            .filter_map(|(_, (a, b))| Some(((*a)?, (*b)?)));
                        Some(both.fold((0u64, 0.0, 0.0), |(n, a, b), (x, y)| (n + 1, a + x, b + y)))
                    });
                    let scored = rows
                        .iter()
                        .zip(errors)
                        .filter_map(|((seq, _), e)| Some((*seq, e?)))
                        .collect();
                    Ok((scored, probation))
                },
            )
            .await
            .map_err(|e| TrainFailure::Training {
                pipeline: p.name.clone(),
                reason: e.to_string(),
            })??;
            let (scored, probation) = scored;
            if let Some(counts) = probation {
                self.probation_step(&p, counts).await?;
            }
            let watch = self
                .watch
                .entry(p.name.clone())
                .or_insert_with(|| new_watch(&p, serving.version));
            if watch.version != serving.version {
                *watch = new_watch(&p, serving.version);
            }
            // Live score of the serving version: errors are 0/1 for a
            // classifier (their sum counts the wrong ones) and |y − ŷ| for a
            // regressor.
            let error_sum: f64 = scored.iter().map(|(_, e)| e).sum();
            let correct = scored.iter().filter(|(_, e)| *e == 0.0).count() as u64;
            if let Some((total, right, errors)) = crate::serve::registry::add_live_score(
                &self.store,
                &p.name,
                serving.version,
                scored.len() as u64,
                correct,
                error_sum,
            )? {
                self.series.record_accuracy(
                    &p.name,
                    crate::stats::now_ms(),
                    serving.version,
                    total,
                    right,
                    errors,
                );
            }
            let mut alarm_at = None;
            for (seq, error) in scored {
                watch.scored += 1;
                watch.errors += error;
                if watch.detector.update(error) && alarm_at.is_none() {
                    alarm_at = Some(seq);
                }
            }
            let mean_error = (watch.scored > 0).then(|| watch.errors / watch.scored as f64);
            let regression = serving.model.task() == learn::Task::Regression;
            let snapshot = ConceptDrift {
                detector: watch.detector.state(),
                serving_version: Some(watch.version),
                scored: watch.scored,
                error_rate: mean_error.filter(|_| !regression),
                mean_abs_error: mean_error.filter(|_| regression),
                alarms: Vec::new(),
                other: OtherAlarms::default(),
            };
            let version = watch.version;
            let labelled = self.store.counts(&p.name)?.labelled_total;
            let since =
                labelled.saturating_sub(self.attempted_at.get(&p.name).copied().unwrap_or(0));
            // An alarm inside the cool-down is deferred, not dropped: the
            // change is answered once, when the cool-down ends.
            let mut action = None;
            let retrains = p.drift.retrains_on(AlarmKind::Error);
            if alarm_at.is_some() && retrains {
                self.deferred.insert(p.name.clone(), Trigger::Drift);
            }
            if let Some(seq) = alarm_at {
                action = Some(if !retrains {
                    "none: retrain_on_drift is off or retrain_on leaves out \"error\"".to_string()
                } else if let Some(wait) = wait_reason(&p, labelled, since) {
                    wait
                } else {
                    "training".to_string()
                });
                warn!(pipeline = %p.name, sample_seq = seq, version, action = action.as_deref().unwrap_or(""), "Concept drift alarm.");
            }
            let mut trained = None;
            if self.deferred.contains_key(&p.name) && wait_reason(&p, labelled, since).is_none() {
                let trigger = self.deferred.remove(&p.name).unwrap_or(Trigger::Drift);
                trained = Some(match self.train(&p.name, trigger, shutdown).await {
                    Ok(card) => match card.decision.as_ref().filter(|d| !d.promoted) {
                        Some(d) => {
                            format!("trained version {}, refused: {}", card.version, d.reason)
                        }
                        None => format!("trained version {}", card.version),
                    },
                    Err(e) => format!("training failed: {e}"),
                });
                if let Some(w) = self.watch.get_mut(&p.name) {
                    w.version = u32::MAX; // the new version starts a fresh detector
                }
            }
            if let (Some(_), Some(action)) = (alarm_at, trained.as_ref().or(action.as_ref())) {
                let event = crate::serve::registry::ServingEvent::now(
                    version,
                    "drift_alarm",
                    action.clone(),
                    crate::serve::registry::BY_LEARNER,
                );
                self.store.append_event(&p.name, &event.to_json(), None)?;
                event.log(&p.name);
            }
            if let Ok(mut board) = self.board.lock() {
                let entry = board.entry(p.name.clone()).or_default();
                let alarms = std::mem::take(&mut entry.alarms);
                let other = std::mem::take(&mut entry.other);
                *entry = ConceptDrift {
                    alarms,
                    other,
                    ..snapshot
                };
                if let (Some(seq), Some(action)) = (alarm_at, action) {
                    entry.alarms.push(DriftAlarm {
                        at_ms: crate::stats::now_ms(),
                        sample_seq: seq,
                        serving_version: version,
                        action,
                    });
                }
                if let (Some(done), Some(last)) = (trained, entry.alarms.last_mut()) {
                    last.action = done;
                }
                if alarm_at.is_some() {
                    // The alarm history survives a restart (the detector
                    // starts afresh on the serving version's new errors).
                    let json = serde_json::to_vec(&entry.alarms).unwrap_or_default();
                    self.store.put_state(&alarms_key(&p.name), &json)?;
                }
            }
        }
        Ok(())
    }

    /// Looks for data-drift and anomaly alarms of each pipeline: new anomaly
    /// episodes since the last look (an alarm more than `episode_gap`
    /// readings after the previous one, the scorer's definition, which
    /// `edgeloop anomaly` lists too) are one alarm when the last alarm is
    /// [`ANOMALY_ALARM_GAP`] old (a burst of anomalous readings is one
    /// episode, one event on the timeline); every `window`
    /// new samples, the newest `window` are compared with the serving
    /// version's training data ([`super::data_drift::against_training`]),
    /// and a window that drifts after one that did not is one alarm (a
    /// lasting change is one alarm, not one per window; a new version
    /// starts afresh).
    async fn watch_alarms(&mut self, shutdown: &CancellationToken) -> Result<(), TrainFailure> {
        let anomaly_totals: HashMap<String, crate::serve::predictions::AnomalyTotals> = self
            .anomaly
            .as_ref()
            .map(|a| a.totals().into_iter().collect())
            .unwrap_or_default();
        for i in 0..self.pipelines.len() {
            let p = self.pipelines[i].clone();
            let serving = self.registry.get(&p.name);
            if let Some(t) = anomaly_totals.get(&p.name) {
                let total = t.episodes;
                let seen = self.anomaly_seen.insert(p.name.clone(), total).unwrap_or(0);
                let version = serving.as_ref().map(|s| s.version);
                let episode = self.anomaly_episode.entry(p.name.clone()).or_default();
                let recent = episode
                    .last
                    .is_some_and(|at| at.elapsed() < ANOMALY_ALARM_GAP);
                if total > seen && !recent {
                    episode.last = Some(std::time::Instant::now());
                    let reason = format!(
                        "{} new episode(s) of anomaly alarms ({} alarmed readings in all: {} by \
                         the trees' threshold, {} by the residual test, {} by the level rule)",
                        total - seen,
                        t.alarms,
                        t.trees_alarms,
                        t.residual_alarms,
                        t.level_alarms
                    );
                    self.alarm(&p, AlarmKind::Anomaly, version, reason, shutdown)
                        .await?;
                }
            }
            let Some(serving) = serving else { continue };
            let Some(last_seq) = serving.card.last_seq else {
                continue;
            };
            let next = self.store.counts(&p.name)?.next_seq;
            let checked = *self
                .data_checked
                .entry(p.name.clone())
                .or_insert(last_seq + 1);
            if next < checked + p.drift.window as u64 {
                continue;
            }
            self.data_checked.insert(p.name.clone(), next);
            let (store, name, features) = (self.store.clone(), p.name.clone(), p.features.clone());
            let (window, reference, rule) =
                (p.drift.window, p.drift.reference, p.drift.data_drift());
            let report = tokio::task::spawn_blocking(move || {
                super::data_drift::against_training(
                    &store, &name, &features, last_seq, window, reference, &rule,
                )
            })
            .await
            .map_err(|e| TrainFailure::Training {
                pipeline: p.name.clone(),
                reason: e.to_string(),
            })??;
            let drifted = report.drifted();
            let state = self
                .data_drifting
                .entry(p.name.clone())
                .or_insert((serving.version, false));
            if state.0 != serving.version {
                *state = (serving.version, false);
            }
            let started = !drifted.is_empty() && !state.1;
            state.1 = !drifted.is_empty();
            let watch = DataWatch {
                checked: next,
                version: state.0,
                drifting: state.1,
            };
            // Not fatal: a store refusing writes (a full disk) must not cost
            // the alarm below; a restart then checks these samples again.
            let json = serde_json::to_vec(&watch).unwrap_or_default();
            if let Err(e) = self.store.put_state(&data_watch_key(&p.name), &json) {
                warn!(pipeline = %p.name, error = %e, "The data-drift watch could not be kept in the store.");
            }
            if started {
                let reason = format!(
                    "{} drifted: samples {}..{} against {} training samples of version {}",
                    drifted.join(", "),
                    report.current_seqs.start,
                    report.current_seqs.end,
                    report.reference_samples,
                    serving.version
                );
                self.alarm(&p, AlarmKind::Data, Some(serving.version), reason, shutdown)
                    .await?;
            }
        }
        Ok(())
    }

    /// A data-drift or anomaly alarm: counted, marked on the timeline
    /// (`data_drift_alarm`, `anomaly_alarm`) and kept on the board; it trains
    /// when `retrain_on` names its kind, at once or when the cool-down ends.
    async fn alarm(
        &mut self,
        p: &MonitoredPipeline,
        kind: AlarmKind,
        version: Option<u32>,
        reason: String,
        shutdown: &CancellationToken,
    ) -> Result<(), TrainFailure> {
        let (action_name, trigger, key) = match kind {
            AlarmKind::Data => ("data_drift_alarm", Trigger::DataDrift, "data"),
            AlarmKind::Anomaly => ("anomaly_alarm", Trigger::Anomaly, "anomaly"),
            AlarmKind::Error => ("drift_alarm", Trigger::Drift, "error"),
        };
        let labelled = self.store.counts(&p.name)?.labelled_total;
        let since = labelled.saturating_sub(self.attempted_at.get(&p.name).copied().unwrap_or(0));
        let action = if !p.drift.retrains_on(kind) {
            format!("none: retrain_on leaves out \"{key}\"")
        } else if self.registry.get(&p.name).is_none() {
            "none: no version serves yet (the first trains at min_labels)".to_string()
        } else if let Some(wait) = wait_reason(p, labelled, since) {
            self.deferred.entry(p.name.clone()).or_insert(trigger);
            wait
        } else {
            self.deferred.remove(&p.name);
            let done = match self.train(&p.name, trigger, shutdown).await {
                Ok(card) => match card.decision.as_ref().filter(|d| !d.promoted) {
                    Some(d) => format!("trained version {}, refused: {}", card.version, d.reason),
                    None => format!("trained version {}", card.version),
                },
                Err(e) => format!("training failed: {e}"),
            };
            if let Some(w) = self.watch.get_mut(&p.name) {
                w.version = u32::MAX;
            }
            done
        };
        warn!(pipeline = %p.name, kind = key, %reason, %action, "Alarm.");
        let event = crate::serve::registry::ServingEvent::now(
            version.unwrap_or(0),
            action_name,
            format!("{reason}; {action}"),
            crate::serve::registry::BY_LEARNER,
        );
        self.store.append_event(&p.name, &event.to_json(), None)?;
        event.log(&p.name);
        if let Ok(mut board) = self.board.lock() {
            let other = &mut board.entry(p.name.clone()).or_default().other;
            match kind {
                AlarmKind::Data => other.data_drift_alarms += 1,
                AlarmKind::Anomaly => other.anomaly_alarms += 1,
                AlarmKind::Error => {}
            }
            other.recent.push(OtherAlarm {
                kind,
                at_ms: event.at_ms,
                serving_version: version,
                reason,
                action,
            });
            let over = other.recent.len().saturating_sub(1000);
            other.recent.drain(..over);
            let json = serde_json::to_vec(&*other).unwrap_or_default();
            self.store.put_state(&other_alarms_key(&p.name), &json)?;
        }
        Ok(())
    }

    /// Relearns each online pipeline's learner from the store (blocking).
    async fn start_online(&mut self) -> Result<(), TrainFailure> {
        for p in self.pipelines.clone() {
            let Ok(Some(family)) = p.online.family() else {
                continue;
            };
            let (store, registry) = (self.store.clone(), self.registry.clone());
            let features = p.model_features();
            let Some(model) =
                super::online::Learned::new(family, p.task, features.len(), p.online.seed)
            else {
                // The configuration's check refuses this before start.
                error!(pipeline = %p.name, %family, "The online family has no regressor: no online learner for this regression pipeline.");
                continue;
            };
            let (settings, cfg) = (p.settings.clone(), p.online.clone());
            let learner = tokio::task::spawn_blocking(move || {
                // A temporal pipeline relearns its rows, formed from every
                // stored reading, a chunk at a time.
                let labelled: Box<dyn Iterator<Item = _>> = if settings.temporal.is_enabled() {
                    let next = store.counts(&settings.name)?.next_seq;
                    Box::new(
                        temporal_chunks(&store, &settings, 0..next, RELEARN_CHUNK, |_| true)
                            .map(|c| c.map(|(_, rows)| rows)),
                    )
                } else {
                    Box::new(labelled_chunks(&store, &settings.name, RELEARN_CHUNK)?)
                };
                super::online::OnlineLearner::restore(
                    &settings.name,
                    family,
                    model,
                    &cfg,
                    features,
                    labelled,
                    &store,
                    &registry,
                )
            })
            .await
            .map_err(|e| TrainFailure::Training {
                pipeline: p.name.clone(),
                reason: format!("online learner: {e}"),
            })??;
            self.online.insert(p.name.clone(), learner);
        }
        Ok(())
    }

    /// Adds `(scored, errors, former_errors)` to the pipeline's probation;
    /// once `model.probation_labels` samples were scored by both, ends it:
    /// the former champion serves again when it did better by more than
    /// [`learn::settings::PROBATION_MARGIN`], else the new version stays.
    async fn probation_step(
        &mut self,
        p: &MonitoredPipeline,
        (scored, errors, former_errors): (u64, f64, f64),
    ) -> Result<(), TrainFailure> {
        let Some(b) = self.probation.get_mut(&p.name) else {
            return Ok(());
        };
        b.scored += scored;
        b.errors += errors;
        b.former_errors += former_errors;
        if b.scored < p.model.probation_labels {
            return Ok(());
        }
        let Some(b) = self.probation.remove(&p.name) else {
            return Ok(());
        };
        let regression = p.task == learn::Task::Regression;
        let n = b.scored as f64;
        let record = |e: f64| {
            if regression {
                format!("MAE {:.4}", e / n)
            } else {
                format!("accuracy {:.4}", 1.0 - e / n)
            }
        };
        let reason = format!(
            "prequential record over the {} labelled samples since v{} started serving: v{} {}, v{} {}",
            b.scored,
            b.version,
            b.version,
            record(b.errors),
            b.former.version,
            record(b.former_errors),
        );
        if !former_wins(b.scored, b.errors, b.former_errors, regression) {
            info!(pipeline = %p.name, version = b.version, %reason, "Probation passed; the new version keeps serving.");
            return Ok(());
        }
        let (store, registry, name, former) = (
            self.store.clone(),
            self.registry.clone(),
            p.name.clone(),
            b.former.version,
        );
        let reason = format!("{reason}: the former champion was better by more than the margin");
        let result = tokio::task::spawn_blocking(move || {
            registry.promote_version(
                &store,
                &name,
                former,
                "rollback",
                reason,
                crate::serve::registry::BY_LEARNER,
            )
        })
        .await
        .map_err(|e| TrainFailure::Training {
            pipeline: p.name.clone(),
            reason: format!("probation: {e}"),
        })?;
        match result {
            Ok(_) => {}
            Err(RegistryError::Store(e)) => return Err(TrainFailure::Store(e)),
            Err(e) => {
                warn!(pipeline = %p.name, version = former, error = %e, "Probation: the former champion could not serve again; the new version keeps serving.")
            }
        }
        Ok(())
    }

    /// The labelled rows of a temporal pipeline's samples in `range` (every
    /// sample of it advances the pipeline's state, [`temporal_rows`]), on a
    /// blocking thread. A failed read drops the state; the next call
    /// rebuilds it.
    async fn temporal_step(
        &mut self,
        p: &MonitoredPipeline,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, Sample)>, TrainFailure> {
        let mut state = self.temporal.remove(&p.name).unwrap_or_else(|| {
            let t = Temporal::new(p.temporal.clone(), p.features.len(), p.classes.len());
            (t, u64::MAX)
        });
        let (store, settings) = (self.store.clone(), p.settings.clone());
        let (state, rows) = tokio::task::spawn_blocking(move || {
            let rows = (|| -> Result<Vec<(u64, Sample)>, StoreError> {
                let mut rows = store.scan(&settings.name, range.clone(), usize::MAX)?;
                temporal_rows(&store, &settings, &mut state, range.start, &mut rows)?;
                Ok(rows
                    .into_iter()
                    .filter(|(_, r)| r.sample.label.is_some())
                    .map(|(seq, r)| (seq, r.sample))
                    .collect())
            })();
            (state, rows)
        })
        .await
        .map_err(|e| TrainFailure::Training {
            pipeline: p.name.clone(),
            reason: format!("temporal rows: {e}"),
        })?;
        let rows = rows?;
        self.temporal.insert(p.name.clone(), state);
        Ok(rows)
    }

    /// Test then train of `pipeline`'s online learner over the labelled
    /// samples among `late` and `range`, or over `derived` when given (a
    /// temporal pipeline's rows of `range`) (a blocking step: store scan,
    /// ONNX runs, snapshot promotion).
    async fn online_step(
        &mut self,
        pipeline: &str,
        late: Vec<u64>,
        range: std::ops::Range<u64>,
        derived: Option<Vec<(u64, Sample)>>,
    ) -> Result<(), TrainFailure> {
        let Some(mut learner) = self.online.remove(pipeline) else {
            return Ok(());
        };
        let (store, registry) = (self.store.clone(), self.registry.clone());
        let name = pipeline.to_string();
        let (learner, result) = tokio::task::spawn_blocking(move || {
            let rows = (|| -> Result<Vec<(u64, Sample)>, StoreError> {
                if let Some(rows) = derived {
                    return Ok(rows);
                }
                let mut rows = Vec::new();
                for seq in late {
                    rows.extend(store.scan(&name, seq..seq + 1, 1)?);
                }
                rows.extend(store.scan(&name, range, usize::MAX)?);
                Ok(rows
                    .into_iter()
                    .filter(|(_, r)| r.sample.label.is_some())
                    .map(|(seq, r)| (seq, r.sample))
                    .collect())
            })();
            let result = rows
                .map_err(RegistryError::from)
                .and_then(|rows| learner.step(&rows, &store, &registry));
            (learner, result)
        })
        .await
        .map_err(|e| TrainFailure::Training {
            pipeline: pipeline.into(),
            reason: format!("online learner: {e}"),
        })?;
        self.online.insert(pipeline.to_string(), learner);
        match result {
            Ok(out) => super::online::log_outcome(pipeline, &out),
            Err(RegistryError::Store(e)) => return Err(TrainFailure::Store(e)),
            Err(e) => {
                warn!(%pipeline, error = %e, "Online snapshot not served; the next labels try again.")
            }
        }
        Ok(())
    }

    async fn check_all(&mut self, shutdown: &CancellationToken) -> Result<(), TrainFailure> {
        for i in 0..self.pipelines.len() {
            let p = &self.pipelines[i];
            let labelled = self.store.counts(&p.name)?.labelled_total;
            let attempted = self.attempted_at.get(&p.name).copied().unwrap_or(0);
            // With an online learner, what counts is whether a batch
            // champion exists (the online learner may serve alone).
            let serving = match self.online.get(&p.name) {
                Some(o) => o.batch_version().is_some(),
                None => self.registry.get(&p.name).is_some(),
            };
            let trigger = if !serving
                && labelled >= p.model.min_labels
                && (attempted == 0
                    || labelled - attempted >= p.model.min_labels.min(p.model.retrain_every))
            {
                Some(Trigger::MinLabels)
            } else if !serving || labelled < p.model.min_labels {
                // A version made elsewhere may serve before the
                // pipeline's own first model could train.
                None
            } else if labelled.saturating_sub(attempted) >= p.model.retrain_every {
                Some(Trigger::NewLabels)
            } else if p.model.schedule_s > 0
                && labelled > attempted
                && self
                    .last_training
                    .get(&p.name)
                    .is_none_or(|t| t.elapsed().as_secs() >= p.model.schedule_s)
            {
                Some(Trigger::Schedule)
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

    /// After a challenger won (a training, or a fleet model): the champion
    /// it replaced goes on probation beside it (`model.probation_labels`;
    /// not for a manual training, nor with an online learner, which is told
    /// of its new batch version instead).
    fn promoted(
        &mut self,
        pipeline: &str,
        serving: Arc<crate::serve::registry::Serving>,
        former: Option<Arc<crate::serve::registry::Serving>>,
        trigger: Trigger,
    ) -> Result<(), TrainFailure> {
        let probation = self
            .pipelines
            .iter()
            .find(|p| p.name == pipeline)
            .map_or(0, |p| p.model.probation_labels);
        match former {
            Some(former)
                if probation > 0
                    && trigger != Trigger::Manual
                    && former.version != serving.version =>
            {
                self.probation.insert(
                    pipeline.to_string(),
                    Probation {
                        version: serving.version,
                        former,
                        scored: 0,
                        errors: 0.0,
                        former_errors: 0.0,
                    },
                );
            }
            _ => {
                self.probation.remove(pipeline);
            }
        }
        if let Some(o) = self.online.get_mut(pipeline) {
            o.batch_trained(serving, &self.store)?;
        }
        Ok(())
    }

    /// Judges the fleet models that waited for labelled samples (each
    /// waits again while there are still none).
    async fn judge_waiting(&mut self) -> Result<(), TrainFailure> {
        let Some(f) = self.fleet.as_mut() else {
            return Ok(());
        };
        // Only those whose pipeline has the labelled samples now (a count,
        // read once per commit while a model waits).
        let mut ready = Vec::new();
        for p in &self.pipelines {
            if f.waiting.contains_key(&p.name)
                && self.store.counts(&p.name)?.labelled_total >= judging_needs(p)
            {
                ready.extend(f.waiting.remove(&p.name));
            }
        }
        for offer in ready {
            self.adopt(offer, true).await?;
        }
        Ok(())
    }

    /// Judges a model another daemon published (`[fleet] adopt`,
    /// [`crate::serve::fleet`]): intake's checks, then the champion/
    /// challenger decision of this pipeline's trainings on its own holdout
    /// ([`learn::judge_version`]); a winner serves (on probation), a loser is
    /// stored with its decision; both carry their origin. A model already
    /// stored (same SHA-256) is skipped.
    async fn adopt(
        &mut self,
        offer: crate::serve::fleet::Offer,
        again: bool,
    ) -> Result<(), TrainFailure> {
        use crate::serve::intake;
        let Some(fleet) = self.fleet.as_ref() else {
            return Ok(());
        };
        let (options, max_bytes) = (fleet.options.clone(), fleet.max_model_bytes);
        let Some(cfg) = self
            .pipelines
            .iter()
            .find(|p| p.name == offer.header.pipeline)
            .cloned()
        else {
            return Ok(());
        };
        let (store, registry, stats) = (
            self.store.clone(),
            self.registry.clone(),
            self.stats.clone(),
        );
        let online = self
            .online
            .get(&cfg.name)
            .map(|o| (o.batch(), o.online_serves()));
        enum Outcome {
            Known,
            Refused(&'static str, String),
            Judged {
                serving: Arc<crate::serve::registry::Serving>,
                former: Option<Arc<crate::serve::registry::Serving>>,
                promoted: bool,
                reason: String,
            },
        }
        let header = offer.header.clone();
        // Kept, should there be nothing to judge it on yet.
        let kept = offer.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<Outcome, TrainFailure> {
            let crate::serve::fleet::Offer {
                header,
                onnx,
                topic,
            } = offer;
            let known = registry.cards(&store, &cfg.name)?.iter().any(|c| {
                c.imported
                    .as_ref()
                    .is_some_and(|i| i.sha256 == header.sha256)
            });
            if known {
                return Ok(Outcome::Known);
            }
            let checked = if onnx.len() as u64 > max_bytes {
                Err(intake::IntakeError::Oversized {
                    bytes: onnx.len() as u64,
                    limit: max_bytes,
                })
            } else {
                intake::check_model(&onnx, &cfg.settings, &options)
            };
            let model = match checked {
                Ok(m) => m,
                Err(e) => {
                    intake::count(&stats, &cfg.name, intake::Source::Fleet, Err(&e));
                    return Ok(Outcome::Refused("intake", e.to_string()));
                }
            };
            // As many labelled samples as its own first model would need.
            let labelled_total = store.counts(&cfg.name)?.labelled_total;
            if labelled_total < judging_needs(&cfg) {
                return Ok(Outcome::Refused(
                    "unjudged",
                    format!(
                        "{labelled_total} labelled samples; judged once there are {} (model.min_labels)",
                        judging_needs(&cfg)
                    ),
                ));
            }
            let TrainingData {
                samples,
                old_regimes,
                ..
            } = training_data(&store, &cfg)?;
            let (serving, former) = champion_and_former(&registry, &cfg.name, &online);
            let params = champion_params(&store, &cfg.name, serving.as_ref());
            let champion = serving.as_ref().map(|s| champion(s, params.as_ref()));
            let decision = match learn::judge_version(
                &cfg.settings,
                &samples,
                old_regimes.as_deref(),
                champion,
                &model,
            ) {
                Ok(d) => d,
                Err(e) => {
                    return Ok(Outcome::Refused(
                        "unjudged",
                        format!(
                            "no holdout to judge it on ({e}); judged when more labelled samples arrive"
                        ),
                    ))
                }
            };
            let version = store.reserve_model_version(&cfg.name)?;
            let mut card = intake::imported_card(
                &cfg.settings,
                &model,
                &onnx,
                intake::Source::Fleet,
                None,
                version,
            );
            card.trigger = Trigger::Fleet;
            if let Some(i) = card.imported.as_mut() {
                i.fleet = Some(crate::learn::card::FleetOrigin {
                    instance: header.instance.clone(),
                    version: header.version,
                    published_ms: header.published_ms,
                    topic,
                });
            }
            card.hyperparameters = serde_json::json!({ "imported": card.imported });
            let promoted = decision.promoted;
            let reason = format!(
                "from fleet member `{}` (its version {}, sha256 {}): {}",
                header.instance, header.version, header.sha256, decision.reason
            );
            card.decision = Some(decision);
            let (action, serve) = match (promoted, &online) {
                (false, _) => ("refused", false),
                (true, Some((_, true))) => ("standby", false),
                (true, _) => ("adopted", true),
            };
            let serving = registry
                .promote_onnx(
                    &store,
                    onnx,
                    card,
                    String::new(),
                    action,
                    reason.clone(),
                    serve,
                )
                .inspect_err(|_| store.release_model_version(&cfg.name, version))?;
            Ok(Outcome::Judged {
                serving,
                former,
                promoted,
                reason,
            })
        })
        .await
        .map_err(|e| TrainFailure::Training {
            pipeline: header.pipeline.clone(),
            reason: format!("judging a fleet model failed: {e}"),
        })
        .and_then(|r| r);
        // Only the store's failures reach the learner's loop (retried there):
        // whatever a model from elsewhere makes fail is its refusal.
        let outcome = match outcome {
            Ok(o) => o,
            Err(e @ TrainFailure::Store(_)) => return Err(e),
            Err(e) => Outcome::Refused("intake", e.to_string()),
        };
        let pipeline = header.pipeline.as_str();
        match outcome {
            Outcome::Known => {
                self.stats.fleet_known.fetch_add(1, Relaxed);
                info!(%pipeline, sha256 = %header.sha256, from = %header.instance, "Fleet model already judged; skipped.");
            }
            Outcome::Refused("unjudged", message) => {
                if !again {
                    self.stats.count_fleet_refused("unjudged");
                    warn!(%pipeline, from = %header.instance, error = %message, "Fleet model waits for labelled samples to be judged on; the current version keeps serving.");
                }
                if let Some(f) = self.fleet.as_mut() {
                    f.waiting.insert(pipeline.to_string(), kept);
                }
            }
            Outcome::Refused(why, message) => {
                self.stats.count_fleet_refused(why);
                warn!(%pipeline, from = %header.instance, reason = why, error = %message, "Fleet model refused; the current version keeps serving.");
            }
            Outcome::Judged {
                serving,
                former,
                promoted: true,
                reason,
            } => {
                self.stats.fleet_adopted.fetch_add(1, Relaxed);
                info!(%pipeline, version = serving.version, %reason, "Fleet model adopted.");
                self.promoted(pipeline, serving, former, Trigger::Fleet)?;
            }
            Outcome::Judged { reason, .. } => {
                self.stats.count_fleet_refused("judged");
                warn!(%pipeline, %reason, "Fleet model lost on this daemon's holdout; the current version keeps serving.");
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
        // With an online learner: the batch champion is its batch version
        // (not the snapshot serving), and a new version that passes stays
        // in standby while the online learner serves.
        let online = self
            .online
            .get(pipeline)
            .map(|o| (o.batch(), o.online_serves()));
        let result =
            tokio::task::spawn_blocking(move || -> Result<(Arc<crate::serve::registry::Serving>, u64, Option<Arc<crate::serve::registry::Serving>>), TrainFailure> {
                let TrainingData { labelled_total, last_seq, samples, old_regimes } =
                    training_data(&store, &cfg)?;
                // Numbered by the store: model intake may register a version
                // while this trains.
                let version = store.reserve_model_version(&cfg.name)?;
                // The serving version is the champion: its parameters (warm
                // start) when edgeloop trained it, else (an imported model)
                // the engine serving it, scored on the same holdout.
                let (serving, former) = champion_and_former(&registry, &cfg.name, &online);
                let params = champion_params(&store, &cfg.name, serving.as_ref());
                let champion = serving.as_ref().map(|s| champion(s, params.as_ref()));
                let trained = learn::train_version(
                    &cfg.settings,
                    &samples,
                    old_regimes.as_deref(),
                    version,
                    trigger,
                    champion,
                    || cancel.is_cancelled(),
                );
                let mut trained = match trained {
                    Ok(t) => t,
                    Err(e) => {
                        store.release_model_version(&cfg.name, version);
                        // `POST …/train` on a new pipeline said only
                        // "training data is empty".
                        let reason = match e {
                            learn::TrainError::Empty if samples.is_empty() => format!(
                                "no labelled sample is stored yet: a reading carries its label \
                                 in the `{}` field, or gets one later on the label topics",
                                cfg.settings.label
                            ),
                            e => e.to_string(),
                        };
                        return Err(TrainFailure::Training {
                            pipeline: cfg.name.clone(),
                            reason,
                        });
                    }
                };
                trained.card.last_seq = last_seq;
                let refused = trained.card.decision.as_ref().is_some_and(|d| !d.promoted);
                let serving = if matches!(online, Some((_, true))) && !refused {
                    let learn::TrainedVersion { model, onnx, card } = trained;
                    let params = serde_json::to_string(&model).unwrap_or_default();
                    let reason = format!(
                        "trigger {}; the online learner serves (more accurate over the recent labelled samples)",
                        card.trigger
                    );
                    registry.promote_onnx(&store, onnx, card, params, "standby", reason, false)
                } else {
                    registry.promote(&store, trained)
                }
                .inspect_err(|_| {
                    store.release_model_version(&cfg.name, version);
                })?;
                store.put_state(&trained_key(&cfg.name), &labelled_total.to_le_bytes())?;
                Ok((serving, labelled_total, former))
            })
            .await
            .map_err(|e| TrainFailure::Training {
                pipeline: pipeline.into(),
                reason: format!("training task failed: {e}"),
            })?;
        // The training's copies are dropped: give their memory back.
        tokio::task::spawn_blocking(learn::return_freed_memory);
        self.last_training
            .insert(pipeline.to_string(), std::time::Instant::now());
        let labelled_now = self.store.counts(pipeline)?.labelled_total;
        match result {
            Ok((serving, labelled_total, former)) => {
                let card = serving.card.clone();
                if card.decision.as_ref().is_none_or(|d| d.promoted) {
                    self.promoted(pipeline, serving, former, trigger)?;
                }
                self.attempted_at.insert(pipeline.into(), labelled_total);
                // The histogram first: a reader that sees the count sees it.
                self.stats
                    .observe_training(pipeline, card.training_ms / 1000.0);
                self.stats.trainings.fetch_add(1, Relaxed);
                let h = card.holdout.as_ref();
                info!(
                    %pipeline, version = card.version, ?trigger, n_train = card.n_train, n_holdout = card.n_holdout,
                    holdout_accuracy = h.map(|m| m.accuracy), holdout_f1 = h.map(|m| m.f1_macro),
                    holdout_r2 = card.holdout_regression.as_ref().and_then(|m| m.r2),
                    training_ms = card.training_ms,
                    decision = card.decision.as_ref().map(|d| d.reason.as_str()).unwrap_or(""),
                    "{}",
                    if card.decision.as_ref().is_none_or(|d| d.promoted) {
                        "Model trained and serving."
                    } else {
                        "Challenger refused; the champion keeps serving."
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_rolls_back_only_beyond_the_margin() {
        // 200 samples: 2 points = 4 more errors.
        assert!(!former_wins(200, 14.0, 10.0, false), "4 more: within");
        assert!(former_wins(200, 15.0, 10.0, false), "5 more: beyond");
        assert!(!former_wins(200, 10.0, 30.0, false), "the new one better");
        // A regressor's MAE: 1.00 against 0.981 (1.9 % lower) and 0.979.
        assert!(!former_wins(100, 100.0, 98.1, true));
        assert!(former_wins(100, 100.0, 97.9, true));
        assert!(!former_wins(0, 0.0, 0.0, false));
    }

    /// A learner of `cfg`'s first pipeline, driven step by step by the test
    /// (no late labels, nothing notified).
    fn test_learner(
        store: &Arc<Store>,
        registry: &Arc<Registry>,
        cfg: &crate::config::Config,
    ) -> Learner {
        let (_late_tx, late_rx) = mpsc::channel(4);
        Learner::new(
            store.clone(),
            registry.clone(),
            vec![cfg.pipelines[0].monitored()],
            Arc::new(Notify::new()),
            late_rx,
            Arc::new(Stats::default()),
        )
        .0
    }

    /// Occupancy-like labelled samples `from..to` of one device: occupied
    /// (class 1) when the light is on, every other sample.
    fn occupancy(from: i64, to: i64) -> Vec<crate::store::NewSample> {
        (from..to)
            .map(|i| crate::store::NewSample {
                pipeline: "occupancy".into(),
                digest: i as u128,
                sample: Sample {
                    timestamp_ms: 1_000 * i,
                    device: "room1".into(),
                    features: vec![
                        20.0 + (i % 7) as f32 * 0.1,
                        30.0,
                        (i % 2) as f32 * 500.0,
                        600.0 + (i % 5) as f32,
                        0.004,
                    ],
                    label: Some((i % 2).to_string()),
                },
                dedup: true,
            })
            .collect()
    }

    /// A version trained and promoted between two of the learner's steps
    /// read samples labelled after the first: the second step scores none
    /// of them live (its training data), and every later one.
    #[tokio::test]
    async fn a_version_is_not_scored_live_on_the_samples_it_was_trained_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let mut cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        cfg.pipelines[0].model.min_labels = 1000;
        cfg.pipelines[0].model.retrain_every = 1_000_000;
        let registry = Arc::new(Registry::new(["occupancy"]));
        let mut learner = test_learner(&store, &registry, &cfg);
        let shutdown = CancellationToken::new();
        let live = || {
            registry.cards(&store, "occupancy").unwrap()[0]
                .live
                .as_ref()
                .map_or(0, |l| l.scored)
        };
        store.append(&occupancy(0, 600)).unwrap();
        // No version yet: the step only moves the learner past seq 599.
        learner.watch_all(&shutdown).await.unwrap();
        store.append(&occupancy(600, 1200)).unwrap();
        // 1,200 labels: version 1, trained on seqs 0..=1199.
        learner.check_all(&shutdown).await.unwrap();
        let v1 = registry.get("occupancy").unwrap();
        assert_eq!((v1.version, v1.card.last_seq), (1, Some(1199)));
        learner.watch_all(&shutdown).await.unwrap();
        assert_eq!(live(), 0, "seqs 600..1200 are its training data");
        store.append(&occupancy(1200, 1500)).unwrap();
        learner.watch_all(&shutdown).await.unwrap();
        assert_eq!(live(), 300, "the 300 after it");
        assert!(!trained_on(1200, 600, Some(1199)));
        assert!(trained_on(600, 600, Some(1199)) && !trained_on(599, 600, Some(1199)));
        assert!(!trained_on(700, 600, None), "a version made elsewhere");
    }

    /// A version made elsewhere serves before the pipeline has
    /// `model.min_labels` labelled samples: a concept-drift alarm then
    /// waits, as through the cool-down, and trains once there are enough.
    #[tokio::test]
    async fn an_alarm_before_min_labels_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let mut cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        cfg.pipelines[0].model.min_labels = 1000;
        cfg.pipelines[0].model.retrain_every = 1_000_000;
        cfg.pipelines[0].drift.retrain_on_drift = true;
        cfg.pipelines[0].drift.cooldown_labels = 0;
        // Version 1, trained elsewhere on 40 samples of the same rule.
        let made_elsewhere: Vec<Sample> = occupancy(10_000, 10_040)
            .into_iter()
            .map(|n| n.sample)
            .collect();
        let settings = cfg.pipelines[0].settings();
        let v1 = learn::train_version(
            &settings,
            &made_elsewhere,
            None,
            1,
            Trigger::Manual,
            None,
            || false,
        )
        .unwrap();
        assert_eq!(v1.card.last_seq, None);
        let registry = Arc::new(Registry::new(["occupancy"]));
        registry.promote(&store, v1).unwrap();
        let mut learner = test_learner(&store, &registry, &cfg);
        let shutdown = CancellationToken::new();
        let flipped = |v: Vec<crate::store::NewSample>| -> Vec<crate::store::NewSample> {
            v.into_iter()
                .map(|mut n| {
                    let y = n.sample.label.as_deref() == Some("0");
                    n.sample.label = Some(u8::from(y).to_string());
                    n
                })
                .collect()
        };
        let last_action = |learner: &Learner| {
            learner.board.lock().unwrap()["occupancy"]
                .alarms
                .last()
                .map(|a| a.action.clone())
        };
        learner.watch_all(&shutdown).await.unwrap();
        // 300 samples it gets right, then the concept flips.
        store.append(&occupancy(0, 300)).unwrap();
        store.append(&flipped(occupancy(300, 600))).unwrap();
        learner.watch_all(&shutdown).await.unwrap();
        assert_eq!(
            last_action(&learner).as_deref(),
            Some("deferred: 600 of 1000 labelled samples (model.min_labels)")
        );
        learner.check_all(&shutdown).await.unwrap();
        assert_eq!(
            store.model_versions("occupancy").unwrap(),
            vec![1],
            "no training"
        );
        store.append(&flipped(occupancy(600, 1000))).unwrap();
        learner.watch_all(&shutdown).await.unwrap();
        let cards = registry.cards(&store, "occupancy").unwrap();
        assert_eq!(cards.len(), 2);
        assert_eq!((cards[1].version, cards[1].trigger), (2, Trigger::Drift));
        assert_eq!(cards[1].n_samples, 1000);
    }

    fn s(ts: i64) -> Sample {
        Sample {
            timestamp_ms: ts,
            device: String::new(),
            features: vec![ts as f32],
            label: Some("a".into()),
        }
    }

    #[test]
    fn prediction_errors_are_zero_one_for_classes_and_absolute_for_values() {
        let classes = ["a".to_string(), "b".to_string()];
        let proba = [0.9, 0.1, 0.3, 0.7, 0.6, 0.4];
        let e = prediction_errors(
            learn::Task::Classification,
            &classes,
            &proba,
            &["a", "a", "b"],
        );
        assert_eq!(e, vec![Some(0.0), Some(1.0), Some(1.0)]);
        let e = prediction_errors(
            learn::Task::Regression,
            &[],
            &[2.5, -1.0, 3.0, 0.0, f32::NAN, f32::INFINITY],
            &["2", " -3.5", "x", "NaN", "1", "1"],
        );
        assert_eq!(e, vec![Some(0.5), Some(2.5), None, None, None, None]);
    }

    #[test]
    fn training_set_is_the_window_plus_a_seeded_reservoir_of_older_samples() {
        let all: Vec<Sample> = (0..100).map(s).collect();
        assert_eq!(
            training_set(all.clone(), 0, 10, 1).len(),
            100,
            "window 0: everything"
        );
        let set = training_set(all.clone(), 20, 10, 7);
        assert_eq!(set.len(), 30);
        let ts: Vec<i64> = set.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(
            &ts[10..],
            &(80..100).collect::<Vec<_>>()[..],
            "the newest 20, in order"
        );
        assert!(ts[..10].iter().all(|t| *t < 80) && ts[..10].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            training_set(all.clone(), 20, 10, 7),
            set,
            "same seed, same sample"
        );
        // The same set in its parts: reservoir, then window.
        let (older, recent) = training_parts(all.clone(), 20, 10, 7);
        assert_eq!((&older[..], &recent[..]), (&set[..10], &set[10..]));
        assert!(
            training_parts(all, 0, 10, 7).0.is_empty(),
            "window 0: no reservoir"
        );
    }

    #[test]
    fn a_windowed_pipeline_trains_on_the_windows_of_its_newest_readings() {
        // 4 devices × 100 labelled readings, interleaved, windows of 10
        // (step 10), `model.window` 200 and a reservoir of 50: the newest
        // 200 readings are each device's last 50, so 5 windows a device, 20
        // in all, each of 10 consecutive readings of its device; no reservoir
        // reading (scattered in time, it would cut the windows).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let samples: Vec<crate::store::NewSample> = (0..400u64)
            .map(|i| crate::store::NewSample {
                pipeline: "occupancy".into(),
                digest: u128::from(i),
                sample: Sample {
                    timestamp_ms: i as i64,
                    device: format!("d{}", i % 4),
                    features: vec![i as f32; 5],
                    label: Some((i % 2).to_string()),
                },
                dedup: true,
            })
            .collect();
        store.append(&samples).unwrap();
        let mut p = crate::config::Config::load_with_env(None, std::iter::empty())
            .unwrap()
            .pipelines
            .remove(0);
        p.windows.enabled = true;
        p.windows.size = 10;
        p.windows.step = 10;
        p.model.window = 200;
        p.model.reservoir = 50;
        let cfg = p.monitored();
        let data = training_data(&store, &cfg).unwrap();
        assert!(data.old_regimes.is_none());
        let seqs: Vec<i64> = data.samples.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(seqs, (200..400).collect::<Vec<_>>(), "the newest 200 only");
        let windows = crate::features::windows::derive(&data.samples, &cfg.windows, 5);
        assert_eq!(windows.len(), 20);
        for w in &windows {
            // `max` of the first feature is the window's last reading, and
            // `min` its first: 9 readings of the device (4 apart) before it.
            let (min, max) = (w.features[2], w.features[3]);
            assert_eq!(max - min, 36.0, "{w:?}");
        }
    }

    #[test]
    fn the_online_relearning_reads_every_labelled_sample_in_chunks() {
        // 1,000 readings, one in three labelled, seqs 0..1000 with the
        // first 100 deleted by retention: chunks of 7 stored samples give
        // the 300 labelled ones from seq 100 on, in seq order, each once.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let samples: Vec<crate::store::NewSample> = (0..1000u64)
            .map(|i| crate::store::NewSample {
                pipeline: "p".into(),
                digest: u128::from(i),
                sample: Sample {
                    timestamp_ms: i as i64,
                    device: String::new(),
                    features: vec![i as f32],
                    label: (i % 3 == 0).then(|| "a".into()),
                },
                dedup: true,
            })
            .collect();
        store.append(&samples).unwrap();
        store.enforce_retention("p", 900, 1000).unwrap();
        let chunks: Vec<Vec<(u64, Sample)>> = labelled_chunks(&store, "p", 7)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            chunks.iter().all(|c| c.len() <= 3),
            "7 stored: at most 3 labelled"
        );
        let seqs: Vec<u64> = chunks.iter().flatten().map(|(seq, _)| *seq).collect();
        let want: Vec<u64> = (100..1000).filter(|i| i % 3 == 0).collect();
        assert_eq!(seqs, want);
        assert_eq!(labelled_chunks(&store, "q", 7).unwrap().count(), 0);
    }

    /// The default pipeline with lags 2, deltas, a rolling window of 3 and
    /// the last label: every temporal feature on.
    fn temporal_pipeline() -> crate::config::PipelineConfig {
        let mut p = crate::config::Config::load_with_env(None, std::iter::empty())
            .unwrap()
            .pipelines
            .remove(0);
        p.temporal.lags = 2;
        p.temporal.deltas = true;
        p.temporal.rolling = 3;
        p.temporal.last_label = true;
        p
    }
    #[test]
    fn a_temporal_pipeline_forms_the_rows_of_its_training_parts_only() {
        // 30,000 readings of 3 interleaved devices, three in four
        // labelled; lags 2, deltas, rolling 3, last label. With
        // `model.window` 300 and a reservoir of 50, a training holds 350
        // rows (not one per labelled reading, 22,500) and reads, for its
        // window, the readings from 20,000 (WARM_READINGS) before its
        // first one on; each row is the one formed from every stored
        // reading (the history it needs is far shorter than the warm-up),
        // the reservoir the same seeded pick.
        use crate::features::temporal::WARM_READINGS;
        const N: u64 = 30_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let samples: Vec<crate::store::NewSample> = (0..N)
            .map(|i| crate::store::NewSample {
                pipeline: "occupancy".into(),
                digest: u128::from(i),
                sample: Sample {
                    timestamp_ms: i as i64 * 1000,
                    device: format!("d{}", i % 3),
                    features: (0..5).map(|j| ((i * 7 + j * 13) % 101) as f32).collect(),
                    label: (i % 4 != 0).then(|| ((i / 5) % 2).to_string()),
                },
                dedup: true,
            })
            .collect();
        store.append(&samples).unwrap();
        let mut p = temporal_pipeline();
        p.model.window = 300;
        p.model.reservoir = 50;
        let cfg = p.monitored();
        let every = temporal_labelled(&store, &cfg.settings).unwrap();
        assert_eq!(every.len(), 22_500);
        let seed = store.counts("occupancy").unwrap().labelled_total;
        let mut readings = 0;
        let (older, recent) =
            temporal_parts(&store, &cfg.settings, 300, 50, seed, &mut readings).unwrap();
        assert_eq!((older.len(), recent.len()), (50, 300));
        // Compared as printed: a first reading's lags are NaN.
        let same = |a: &[(u64, Sample)], b: &[(u64, Sample)]| format!("{a:?}") == format!("{b:?}");
        assert!(same(&recent, &every[every.len() - 300..]));
        let strip = |v: &[(u64, Sample)]| v.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>();
        let want = training_parts(strip(&every), 300, 50, seed);
        assert!(format!("{:?}", (strip(&older), strip(&recent))) == format!("{want:?}"));
        // The window alone: from WARM_READINGS before its first reading.
        let mut window_readings = 0;
        let (none, again) =
            temporal_parts(&store, &cfg.settings, 300, 0, seed, &mut window_readings).unwrap();
        assert!(none.is_empty());
        assert!(same(&again, &recent));
        let first = recent[0].0;
        assert_eq!(first, 29_601, "the 300th labelled reading from the end");
        assert_eq!(window_readings, WARM_READINGS + (N - first));
        assert!(readings < 2 * N, "{readings}");
        // A training holds the two parts, 350 rows.
        let data = training_data(&store, &cfg).unwrap();
        assert_eq!(data.samples.len(), 350);
        assert_eq!(data.last_seq, Some(N - 1));
        // Window 0: every labelled row, formed from the first reading.
        let mut all_readings = 0;
        let (none, all) =
            temporal_parts(&store, &cfg.settings, 0, 50, seed, &mut all_readings).unwrap();
        assert!(none.is_empty());
        assert!(same(&all, &every));
        assert_eq!(all_readings, N);
    }

    /// A quiet device "q" behind a busy gateway: its readings 21, 22, 23
    /// (the first labelled "1", the other two unlabelled) at seqs 0-2, then
    /// 25,000 unlabelled readings of device "b" (seqs 3-25,002), more than
    /// WARM_READINGS; with `last_label` `q`'s last label lies behind two
    /// readings of its own. Lags 2, deltas, rolling 3, last label; the
    /// pipeline and its store.
    fn quiet_behind_busy() -> (tempfile::TempDir, Store, crate::config::PipelineConfig) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let reading = |i: u64, device: &str, t: f32, label: Option<&str>| crate::store::NewSample {
            pipeline: "occupancy".into(),
            digest: u128::from(i),
            sample: Sample {
                timestamp_ms: 1_000 * i as i64,
                device: device.into(),
                features: vec![t, 30.0, 500.0, 600.0, 0.004],
                label: label.map(str::to_string),
            },
            dedup: true,
        };
        store
            .append(&[
                reading(0, "q", 21.0, Some("1")),
                reading(1, "q", 22.0, None),
                reading(2, "q", 23.0, None),
            ])
            .unwrap();
        for chunk in (3..25_003u64).collect::<Vec<_>>().chunks(5_000) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|&i| reading(i, "b", (i % 50) as f32, None))
                .collect();
            store.append(&batch).unwrap();
        }
        let p = temporal_pipeline();
        (dir, store, p)
    }

    /// The row of "q"'s reading 24 (or 25) after its 21, 22, 23, labelled
    /// "1" at 21, as its whole history gives it: lags 23 and 22, delta,
    /// rolling mean and std over the last 3, last label "1" (of "0", "1").
    fn assert_quiet_row(row: &[f32], x: f32) {
        assert_eq!(row.len(), 5 * 6 + 2);
        assert_eq!((row[0], row[5], row[10]), (x, 23.0, 22.0), "{row:?}");
        assert_eq!(row[15], x - 23.0, "delta: {row:?}");
        let window = [x, 23.0, 22.0];
        let mean = window.iter().sum::<f32>() / 3.0;
        let std = (window.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0).sqrt();
        assert!((row[20] - mean).abs() < 1e-5, "mean: {row:?}");
        assert!((row[25] - std).abs() < 1e-5, "std: {row:?}");
        assert_eq!(&row[30..], &[0.0, 1.0], "last label: {row:?}");
    }

    /// Training: "q"'s labelled reading 24 at seq 25,003 has its previous
    /// readings more than WARM_READINGS back. A windowed training's row of
    /// it (formed from 20,000 readings before it, and q's own past from
    /// the time index) equals the row formed from every stored reading:
    /// lags 23, 22 and last label "1", not NaN and none.
    #[test]
    fn a_quiet_devices_training_row_has_its_past_beyond_the_warm_up() {
        let (_dir, store, mut p) = quiet_behind_busy();
        let mut q = store.scan("occupancy", 0..1, 1).unwrap().remove(0).1.sample;
        q.timestamp_ms = 1_000 * 25_003;
        q.features[0] = 24.0;
        q.label = Some("0".into());
        store
            .append(&[crate::store::NewSample {
                pipeline: "occupancy".into(),
                digest: 25_003,
                sample: q,
                dedup: true,
            }])
            .unwrap();
        p.model.window = 1;
        p.model.reservoir = 0;
        let cfg = p.monitored();
        let mut readings = 0;
        let (none, window) = temporal_parts(&store, &cfg.settings, 1, 0, 0, &mut readings).unwrap();
        assert!(none.is_empty());
        assert_eq!(window.len(), 1);
        assert_eq!(window[0].0, 25_003);
        assert_quiet_row(&window[0].1.features, 24.0);
        // 20,000 scanned and the newest reading, 2 of q's and its label's.
        assert_eq!(readings, WARM_READINGS + 1 + 3);
        let every = temporal_labelled(&store, &cfg.settings).unwrap();
        assert_eq!(
            format!("{:?}", every.last()),
            format!("{:?}", window.last())
        );
        // Live scoring resuming at that reading (a gap: a fresh state)
        // forms the same row from the 20,000 before it and q's past.
        let mut state = (
            Temporal::new(p.temporal.clone(), p.features.len(), p.classes.len()),
            u64::MAX,
        );
        let mut rows = store.scan("occupancy", 25_003..25_004, 1).unwrap();
        temporal_rows(&store, &cfg.settings, &mut state, 25_003, &mut rows).unwrap();
        assert_eq!(rows.len(), 1);
        assert_quiet_row(&rows[0].1.sample.features, 24.0);
        assert_eq!(state.1, 25_004);
    }

    /// Serving after a restart: the state warmed at start
    /// (`daemon::warm_temporal`) gives "q", whose readings all lie before
    /// the newest 20,000, the row its whole history gives.
    #[test]
    fn a_quiet_devices_serving_row_after_a_restart_has_its_past() {
        let (_dir, store, p) = quiet_behind_busy();
        let (shared, _) = crate::daemon::warm_temporal(&store, &p).unwrap();
        let row = shared.row("q", &[25.0, 30.0, 500.0, 600.0, 0.004]);
        assert_quiet_row(&row, 25.0);
        // The busy device's own, from the scan: lags 25,002 and 25,001.
        let row = shared.row("b", &[1.0, 30.0, 500.0, 600.0, 0.004]);
        assert_eq!((row[5], row[10]), (2.0, 1.0));
        assert_eq!(&row[30..], &[0.0, 0.0]);
    }

    #[test]
    fn the_store_picks_the_training_parts_without_decoding_every_sample() {
        // 3,000 readings, two in three labelled, timestamps not in seq
        // order (a device clock that jumped back): Store::labelled_parts
        // gives the parts training_parts cuts from Store::labelled.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let samples: Vec<crate::store::NewSample> = (0..3000u64)
            .map(|i| crate::store::NewSample {
                pipeline: "p".into(),
                digest: u128::from(i),
                sample: Sample {
                    timestamp_ms: ((i * 7919) % 3000) as i64,
                    device: format!("d{}", i % 5),
                    features: vec![i as f32],
                    label: (i % 3 != 0).then(|| (i % 2).to_string()),
                },
                dedup: true,
            })
            .collect();
        store.append(&samples).unwrap();
        let all = store.labelled("p").unwrap();
        assert_eq!(all.len(), 2000);
        for (window, reservoir, seed) in [(0, 10, 1), (300, 50, 7), (300, 5000, 7), (5000, 10, 3)] {
            let want = training_parts(
                all.iter().map(|(_, s)| s.clone()).collect(),
                window,
                reservoir,
                seed,
            );
            let (older, recent) = store.labelled_parts("p", window, reservoir, seed).unwrap();
            let strip = |v: Vec<(u64, Sample)>| v.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
            assert_eq!(
                (strip(older), strip(recent)),
                want,
                "{window} {reservoir} {seed}"
            );
        }
    }
}
