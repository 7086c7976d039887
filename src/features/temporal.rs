//! Temporal features: what a sensor stream's recent past says about its
//! present (issue 17). One model row per reading, formed from the reading,
//! the same device's earlier readings and the device's last known label.
//!
//! For a reading `x_t` (`[n]` raw features, `NaN` = missing) of a device, the
//! row is, in this order (names from [`TemporalConfig::feature_names`]):
//!
//! 1. `x_t` itself (`{f}`);
//! 2. `lags` lags, `x_{t−1} … x_{t−lags}` (`{f}_lag{k}`, lag-major);
//! 3. with `deltas`, `x_t − x_{t−1}` (`{f}_delta`);
//! 4. with `rolling = r ≥ 2`, the mean and population standard deviation of
//!    each feature over the last `r` readings, `x_t` included, missing
//!    values skipped (`{f}_mean{r}`, `{f}_std{r}`; `NaN` with none present);
//! 5. with `last_label`, the device's last known label one-hot over the
//!    classes (`last_label_{class}`; all 0 before any): a label known
//!    *before* this reading, never the reading's own.
//!
//! A lag or delta reaching before the device's first reading is `NaN`
//! (missing), as are those of a missing value. The caller forms the row
//! ([`Temporal::row`]), then records the reading ([`Temporal::push`]) and,
//! when its label becomes known, the label ([`Temporal::label`]): test then
//! train, so a row never sees its own label. Devices are kept apart, at most
//! `max_devices` (the least recently seen is forgotten when a new one comes,
//! and counted in [`Temporal::evicted`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ingest::decode::Sample;

/// `[pipelines.temporal]`: which temporal features a model sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalConfig {
    /// Earlier readings of the device given as features (0: none).
    pub lags: usize,
    /// The change since the device's previous reading, per feature.
    pub deltas: bool,
    /// Readings (the current one included) of the rolling mean and standard
    /// deviation per feature (0: none; else at least 2).
    pub rolling: usize,
    /// The device's last known label, one-hot (classification).
    pub last_label: bool,
    /// Devices whose history is kept.
    pub max_devices: usize,
    /// The daemon's serving state ([`SharedTemporal`]): set at start for a
    /// pipeline with temporal features, shared by the MQTT predictor and
    /// HTTP predict; runtime state, not a key.
    #[serde(skip)]
    pub state: Option<Arc<SharedTemporal>>,
}

impl Default for TemporalConfig {
    fn default() -> Self {
        Self {
            lags: 0,
            deltas: false,
            rolling: 0,
            last_label: false,
            max_devices: 10_000,
            state: None,
        }
    }
}

/// The most lags or rolling readings.
pub const MAX_HISTORY: usize = 10_000;

/// The newest stored readings the daemon's serving state and the learner's
/// live scoring replay when they start (or resume after a gap), so that the
/// first rows after a restart have their devices' past; a device whose
/// past lies further back gets its own newest readings before them from
/// the store's time index (`monitor::retrain::temporal_warm`).
pub const WARM_READINGS: u64 = 20_000;

/// How many of a device's own readings before [`WARM_READINGS`] (or before
/// a training row's scan) are searched for its last label, when
/// `last_label` is on and none of the readings read for it has one; a
/// label further back than that is not found after a restart.
pub const LABEL_LOOKBACK: usize = 256;

impl TemporalConfig {
    /// Whether any temporal feature is on.
    pub fn is_enabled(&self) -> bool {
        self.lags > 0 || self.deltas || self.rolling > 0 || self.last_label
    }

    /// Checks the section.
    ///
    /// # Errors
    /// A message naming the key and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if self.lags > MAX_HISTORY {
            return Err(format!("lags: {} must be at most {MAX_HISTORY}", self.lags));
        }
        if self.rolling == 1 || self.rolling > MAX_HISTORY {
            return Err(format!(
                "rolling: {} must be 0 (off) or in 2..={MAX_HISTORY}",
                self.rolling
            ));
        }
        if self.max_devices == 0 {
            return Err("max_devices: must be at least 1".into());
        }
        Ok(())
    }

    /// Readings of history a device needs (before the current one).
    pub fn history(&self) -> usize {
        self.lags
            .max(usize::from(self.deltas))
            .max(self.rolling.saturating_sub(1))
    }

    /// Width of a row for `n_raw` features and `n_classes` classes.
    pub fn width(&self, n_raw: usize, n_classes: usize) -> usize {
        n_raw * (1 + self.lags + usize::from(self.deltas) + 2 * usize::from(self.rolling > 0))
            + if self.last_label { n_classes } else { 0 }
    }

    /// The names of a row's features, in row order.
    pub fn feature_names(&self, raw: &[String], classes: &[String]) -> Vec<String> {
        let mut names: Vec<String> = raw.to_vec();
        for k in 1..=self.lags {
            names.extend(raw.iter().map(|f| format!("{f}_lag{k}")));
        }
        if self.deltas {
            names.extend(raw.iter().map(|f| format!("{f}_delta")));
        }
        if self.rolling > 0 {
            names.extend(raw.iter().map(|f| format!("{f}_mean{}", self.rolling)));
            names.extend(raw.iter().map(|f| format!("{f}_std{}", self.rolling)));
        }
        if self.last_label {
            names.extend(classes.iter().map(|c| format!("last_label_{c}")));
        }
        names
    }
}

#[derive(Debug, Clone)]
struct Device {
    /// Earlier readings, newest last, at most `history()`.
    readings: VecDeque<Vec<f64>>,
    last_label: Option<usize>,
    seen: u64,
}

/// The streaming state: each device's recent readings and last label.
#[derive(Debug, Clone)]
pub struct Temporal {
    cfg: TemporalConfig,
    n_raw: usize,
    n_classes: usize,
    devices: HashMap<String, Device>,
    tick: u64,
    evicted: u64,
}

impl Temporal {
    /// An empty state for readings of `n_raw` features and `n_classes`
    /// classes (used by `last_label`).
    pub fn new(cfg: TemporalConfig, n_raw: usize, n_classes: usize) -> Self {
        Self {
            cfg,
            n_raw,
            n_classes,
            devices: HashMap::new(),
            tick: 0,
            evicted: 0,
        }
    }

    /// Width of the rows ([`TemporalConfig::width`]).
    pub fn width(&self) -> usize {
        self.cfg.width(self.n_raw, self.n_classes)
    }

    /// Devices forgotten to keep `max_devices`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The row of reading `x` (`[n_raw]`) of `device` into `out`
    /// (`[width]`), from the history recorded so far; `x` is not recorded.
    pub fn row(&self, device: &str, x: &[f64], out: &mut Vec<f64>) {
        let n = self.n_raw;
        let dev = self.devices.get(device);
        let readings = dev.map(|d| &d.readings);
        // k-th earlier reading (1 = the previous one).
        let earlier = |k: usize| -> Option<&Vec<f64>> {
            let r = readings?;
            r.len().checked_sub(k).map(|i| &r[i])
        };
        out.clear();
        out.extend_from_slice(&x[..n]);
        for k in 1..=self.cfg.lags {
            match earlier(k) {
                Some(r) => out.extend_from_slice(r),
                None => out.extend(std::iter::repeat_n(f64::NAN, n)),
            }
        }
        if self.cfg.deltas {
            match earlier(1) {
                Some(r) => out.extend(x.iter().zip(r).map(|(a, b)| a - b)),
                None => out.extend(std::iter::repeat_n(f64::NAN, n)),
            }
        }
        if self.cfg.rolling > 0 {
            let start = out.len();
            out.extend(std::iter::repeat_n(f64::NAN, 2 * n));
            for j in 0..n {
                let (mut count, mut sum) = (0usize, 0.0f64);
                let mut add = |v: f64| {
                    if !v.is_nan() {
                        count += 1;
                        sum += v;
                    }
                };
                add(x[j]);
                for k in 1..self.cfg.rolling {
                    if let Some(r) = earlier(k) {
                        add(r[j]);
                    }
                }
                if count == 0 {
                    continue;
                }
                let mean = sum / count as f64;
                let mut ss = 0.0;
                let mut dev2 = |v: f64| {
                    if !v.is_nan() {
                        ss += (v - mean) * (v - mean);
                    }
                };
                dev2(x[j]);
                for k in 1..self.cfg.rolling {
                    if let Some(r) = earlier(k) {
                        dev2(r[j]);
                    }
                }
                out[start + j] = mean;
                out[start + n + j] = (ss / count as f64).sqrt();
            }
        }
        if self.cfg.last_label {
            let last = dev.and_then(|d| d.last_label);
            out.extend((0..self.n_classes).map(|c| if last == Some(c) { 1.0 } else { 0.0 }));
        }
    }

    fn device_mut(&mut self, device: &str) -> &mut Device {
        self.tick += 1;
        if !self.devices.contains_key(device) && self.devices.len() >= self.cfg.max_devices {
            if let Some(oldest) = self
                .devices
                .iter()
                .min_by_key(|(_, d)| d.seen)
                .map(|(k, _)| k.clone())
            {
                self.devices.remove(&oldest);
                self.evicted += 1;
            }
        }
        let tick = self.tick;
        let d = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| Device {
                readings: VecDeque::new(),
                last_label: None,
                seen: tick,
            });
        d.seen = tick;
        d
    }

    /// Records reading `x` of `device` (after its row was formed).
    pub fn push(&mut self, device: &str, x: &[f64]) {
        let keep = self.cfg.history();
        let n = self.n_raw;
        let d = self.device_mut(device);
        if keep == 0 {
            return;
        }
        let mut slot = if d.readings.len() >= keep {
            d.readings.pop_front().unwrap_or_default()
        } else {
            Vec::with_capacity(n)
        };
        slot.clear();
        slot.extend_from_slice(&x[..n]);
        d.readings.push_back(slot);
    }

    /// Records that `device`'s label is now `class` (its last known label
    /// for the rows formed from now on).
    pub fn label(&mut self, device: &str, class: usize) {
        self.device_mut(device).last_label = Some(class);
    }

    /// What `device`'s rows reach for that is not recorded: how many of
    /// its earlier readings (of [`TemporalConfig::history`]), and whether
    /// its last label (with `last_label` and classes, none known yet).
    pub fn missing_past(&self, device: &str) -> (usize, bool) {
        let wants_label = self.cfg.last_label && self.n_classes > 0;
        match self.devices.get(device) {
            Some(d) => (
                self.cfg.history().saturating_sub(d.readings.len()),
                wants_label && d.last_label.is_none(),
            ),
            None => (self.cfg.history(), wants_label),
        }
    }

    /// Completes `device`'s history with its readings from before every one
    /// recorded for it: `older` (raw features as stored, after the same
    /// cleaning; oldest first) fill the earlier readings missing
    /// ([`Temporal::missing_past`]), and the newest of their labels among
    /// `classes` becomes the last label when none is known. The state is
    /// then the one [`Temporal::advance`] would have left had `older` come
    /// first. The device counts as seen now.
    pub fn backfill(&mut self, device: &str, older: &[&Sample], classes: &[String]) {
        let keep = self.cfg.history();
        let n = self.n_raw;
        let last = older.iter().rev().find_map(|s| {
            s.label
                .as_deref()
                .and_then(|l| classes.iter().position(|c| c == l))
        });
        let d = self.device_mut(device);
        let room = keep.saturating_sub(d.readings.len());
        for s in older.iter().rev().take(room) {
            d.readings.push_front(raw_of(s, n));
        }
        if d.last_label.is_none() {
            d.last_label = last;
        }
    }

    /// Test then train on a stored sample: its model row (`[width]`, f32 as
    /// samples hold features) from its device's history, then the reading
    /// recorded and its label, when it has one of `classes`, recorded as the
    /// device's last known label. The one step behind every temporal row
    /// of the daemon: training ([`derive`]), live scoring, the MQTT
    /// predictor and the stream HTTP predict reads ([`SharedTemporal`]).
    pub fn advance(&mut self, s: &Sample, classes: &[String], scratch: &mut Vec<f64>) -> Vec<f32> {
        let x: Vec<f64> = raw_of(s, self.n_raw);
        self.row(&s.device, &x, scratch);
        let row = scratch.iter().map(|v| *v as f32).collect();
        self.push(&s.device, &x);
        if let Some(c) = s
            .label
            .as_deref()
            .and_then(|l| classes.iter().position(|c| c == l))
        {
            self.label(&s.device, c);
        }
        row
    }
}

/// A sample's raw features as f64, `NaN`-padded or cut to `n_raw`.
fn raw_of(s: &Sample, n_raw: usize) -> Vec<f64> {
    (0..n_raw)
        .map(|j| s.features.get(j).map_or(f64::NAN, |v| f64::from(*v)))
        .collect()
}

/// The model rows of `samples`, given in the store's arrival order (by
/// sequence number), every reading labelled or not: each sample keeps its
/// seq, device, timestamp and label, and its features become its temporal
/// row ([`Temporal::advance`], `[cfg.width(n_raw, classes.len())]`). The
/// caller keeps the labelled rows to train on: their lags and rolling
/// statistics come from the device's readings in between as well, as at
/// serving. `classes` is the pipeline's declared list (`last_label`'s
/// one-hot; a label not in it is not recorded).
pub fn derive(
    cfg: &TemporalConfig,
    n_raw: usize,
    classes: &[String],
    samples: Vec<(u64, Sample)>,
) -> Vec<(u64, Sample)> {
    let mut t = Temporal::new(cfg.clone(), n_raw, classes.len());
    let mut scratch = Vec::new();
    samples
        .into_iter()
        .map(|(seq, s)| {
            let features = t.advance(&s, classes, &mut scratch);
            (seq, Sample { features, ..s })
        })
        .collect()
}

/// The serving side's state of a temporal pipeline: each device's recent
/// readings and last label as the MQTT predictor saw them arrive (every
/// stored reading, labelled or not, in commit order), shared with HTTP
/// predict, which forms rows from it without recording them.
#[derive(Debug)]
pub struct SharedTemporal {
    classes: Vec<String>,
    state: Mutex<Temporal>,
}

impl PartialEq for SharedTemporal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl SharedTemporal {
    /// An empty state for `n_raw` raw features and the pipeline's `classes`.
    pub fn new(cfg: &TemporalConfig, n_raw: usize, classes: &[String]) -> Self {
        Self {
            classes: classes.to_vec(),
            state: Mutex::new(Temporal::new(
                TemporalConfig {
                    state: None,
                    ..cfg.clone()
                },
                n_raw,
                classes.len(),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Temporal> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Temporal::advance`] over `samples` in order: their rows, each
    /// reading then recorded. Also returns the devices evicted meanwhile.
    pub fn advance(&self, samples: &[&Sample]) -> (Vec<Vec<f32>>, u64) {
        let mut t = self.lock();
        let before = t.evicted();
        let mut scratch = Vec::new();
        let rows = samples
            .iter()
            .map(|s| t.advance(s, &self.classes, &mut scratch))
            .collect();
        let evicted = t.evicted() - before;
        (rows, evicted)
    }

    /// The row of a reading `x` (`[n_raw]`, `NaN` = missing) of `device`
    /// from what the stream recorded so far, without recording it (a query
    /// does not become the device's history).
    pub fn row(&self, device: &str, x: &[f32]) -> Vec<f32> {
        let t = self.lock();
        let x: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
        let mut out = Vec::new();
        t.row(device, &x, &mut out);
        out.into_iter().map(|v| v as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TemporalConfig {
        TemporalConfig {
            lags: 2,
            deltas: true,
            rolling: 3,
            last_label: true,
            max_devices: 2,
            state: None,
        }
    }

    #[test]
    fn rows_use_only_the_past_and_earlier_labels() {
        let mut t = Temporal::new(cfg(), 2, 3);
        assert_eq!(t.width(), 2 * (1 + 2 + 1 + 2) + 3);
        let xs = [[1.0, 10.0], [2.0, f64::NAN], [4.0, 40.0], [8.0, 80.0]];
        let labels = [2, 0, 1, 1];
        let mut out = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            t.row("a", x, &mut out);
            assert_eq!(out.len(), t.width());
            for j in 0..2 {
                assert!(out[j] == x[j] || (out[j].is_nan() && x[j].is_nan()));
            }
            for k in 1..=2 {
                for j in 0..2 {
                    let got = out[2 * k + j];
                    match i.checked_sub(k) {
                        Some(p) => assert!(got == xs[p][j] || (got.is_nan() && xs[p][j].is_nan())),
                        None => assert!(got.is_nan()),
                    }
                }
            }
            // Rolling over the last 3 readings, x_t included, NaN skipped:
            // a batch recomputation.
            for j in 0..2 {
                let window: Vec<f64> = xs[i.saturating_sub(2)..=i]
                    .iter()
                    .map(|r| r[j])
                    .filter(|v| !v.is_nan())
                    .collect();
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                let std = (window.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                    / window.len() as f64)
                    .sqrt();
                assert!((out[8 + j] - mean).abs() < 1e-12);
                assert!((out[10 + j] - std).abs() < 1e-12);
            }
            // Last label: the previous row's, never this row's own.
            let onehot = &out[12..15];
            match i.checked_sub(1) {
                Some(p) => assert_eq!(onehot[labels[p]], 1.0, "row {i}"),
                None => assert_eq!(onehot, &[0.0, 0.0, 0.0]),
            }
            assert_eq!(onehot.iter().sum::<f64>(), if i == 0 { 0.0 } else { 1.0 });
            t.push("a", x);
            t.label("a", labels[i]);
        }
        // Deltas of the last row: 8 − 4, 80 − 40.
        assert_eq!(&out[6..8], &[4.0, 40.0]);
    }

    #[test]
    fn devices_are_kept_apart_and_bounded() {
        let mut t = Temporal::new(cfg(), 2, 3);
        let mut out = Vec::new();
        t.push("a", &[1.0, 1.0]);
        t.label("a", 1);
        t.row("b", &[5.0, 5.0], &mut out);
        assert!(out[2].is_nan(), "b has no history of its own");
        assert_eq!(&out[12..15], &[0.0, 0.0, 0.0]);
        t.push("b", &[5.0, 5.0]);
        t.push("c", &[7.0, 7.0]);
        assert_eq!(t.evicted(), 1);
        t.row("a", &[2.0, 2.0], &mut out);
        assert!(out[2].is_nan(), "a was the least recently seen");
    }

    /// Backfilling a device's older readings after its newer ones were
    /// recorded leaves the rows the state of every reading in order gives:
    /// for each split of 6 readings (labelled at the first two), the next
    /// row is the same; a device with enough history keeps its own.
    #[test]
    fn a_backfilled_past_gives_the_rows_of_the_whole_history() {
        let classes = ["0".to_string(), "1".to_string(), "2".to_string()];
        let xs: Vec<Sample> = (0..6)
            .map(|i| Sample {
                timestamp_ms: i,
                device: "a".into(),
                features: vec![i as f32 * 1.5, 10.0 - i as f32],
                label: (i < 2).then(|| (i + 1).to_string()),
            })
            .collect();
        let mut scratch = Vec::new();
        let next = [7.0, 7.0];
        let mut whole = Temporal::new(cfg(), 2, 3);
        for s in &xs {
            whole.advance(s, &classes, &mut scratch);
        }
        let mut want = Vec::new();
        whole.row("a", &next, &mut want);
        assert_eq!(&want[12..15], &[0.0, 0.0, 1.0]);
        for split in 0..=xs.len() {
            let mut t = Temporal::new(cfg(), 2, 3);
            for s in &xs[split..] {
                t.advance(s, &classes, &mut scratch);
            }
            let (need, label) = t.missing_past("a");
            assert_eq!(need, 2usize.saturating_sub(xs.len() - split), "{split}");
            assert_eq!(label, split >= 2, "{split}");
            t.backfill("a", &xs[..split].iter().collect::<Vec<_>>(), &classes);
            let mut got = Vec::new();
            t.row("a", &next, &mut got);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{split}");
            assert_eq!(t.missing_past("a"), (0, false));
        }
        let mut fresh = Temporal::new(cfg(), 2, 3);
        assert_eq!(fresh.missing_past("b"), (2, true));
        fresh.backfill("b", &[], &classes);
        assert_eq!(fresh.missing_past("b"), (2, true));
    }

    #[test]
    fn names_follow_the_row() {
        let c = cfg();
        let names = c.feature_names(
            &["t".into(), "h".into()],
            &["off".into(), "on".into(), "x".into()],
        );
        assert_eq!(names.len(), c.width(2, 3));
        assert_eq!(names[2], "t_lag1");
        assert_eq!(names[6], "t_delta");
        assert_eq!(names[8], "t_mean3");
        assert_eq!(names[10], "t_std3");
        assert_eq!(names[12], "last_label_off");
        assert!(TemporalConfig {
            rolling: 1,
            ..c.clone()
        }
        .validate()
        .unwrap_err()
        .starts_with("rolling:"));
        assert!(c.validate().is_ok());
    }
}
