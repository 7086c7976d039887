//! Unsupervised anomaly scores from the first reading: Half-Space Trees.
//!
//! [`HalfSpaceTrees`] follows Tan, Ting & Liu, "Fast anomaly detection for
//! streaming data" (IJCAI 2011), as River 0.26 implements it
//! (`river.anomaly.HalfSpaceTrees`, `river.tree.padded.make_padded_tree`):
//! `n_trees` random trees of `height` levels over features scaled to
//! [0, 1]; each split picks a feature with probability proportional to the
//! width of its current range and a threshold uniformly in the middle 70 %
//! of that range (padding 0.15). Each node counts the readings of the
//! current window that pass it (`l_mass`); every `window_size` readings the
//! counts become the reference (`r_mass`) and restart. A reading's score is
//! `1 - Σ_trees Σ_depth r_mass · 2^depth / (n_trees · window_size ·
//! (2^(height+1) - 1))` along its path, stopping at the first node whose
//! reference mass is below `0.1 · window_size`: 0 for the most common
//! regions, towards 1 for readings in regions the last window rarely
//! visited. Scores are 0 during the first window.
//!
//! [`ScaledHalfSpaceTrees`] puts River's online `MinMaxScaler` in front (the
//! pipeline River's documentation recommends, `MinMaxScaler() |
//! HalfSpaceTrees()`): each reading is scaled by the minimum and maximum of
//! the readings learned so far.
//!
//! The trees are drawn with [`PyRandom`], CPython's Mersenne Twister with
//! its seeding, `random()`, `uniform()` and weighted `choices()`, so that a
//! seed gives River's trees and River's scores exactly
//! (`tests/anomaly.rs` against `tests/fixtures/anomaly/gen_hst.py`).
//!
//! [`Threshold`] turns scores into alarms: once `calibration` readings
//! after the first window were scored, a score above the `quantile` of the
//! last `history` scores is above the threshold, and an alarm when at least
//! `persistence` of the last `persistence_window` readings (this one among
//! them) were above their thresholds: a run rule of the Western Electric
//! kind ("2 of 3 successive points beyond 2 σ", Western Electric,
//! "Statistical Quality Control Handbook", 1956, part A, section 1 B;
//! Nelson, "The Shewhart control chart: tests for special causes", Journal
//! of Quality Technology 1984). With 2 of 5, an anomaly that dips out and
//! back (every other reading far out) alarms at its second far reading,
//! where 2 in a row waits for two far readings back to back.
//!
//! [`ResidualZ`] is the second alarm rule of the daemon's [`Scorer`] (and
//! of `edgeloop anomaly`): each feature's residual against its
//! exponentially weighted moving average (EWMA; Roberts, "Control chart
//! tests based on geometric moving averages", Technometrics 1959) in units
//! of its smoothed mean absolute deviation (MAD; Brown, "Smoothing,
//! Forecasting and Prediction of Discrete Time Series", 1963, ch. 17; for
//! Gaussian noise σ ≈ 1.25 MAD), the forecast-error test of Trigg's
//! tracking signal. Half-Space Trees over min-max-scaled readings see
//! where a reading lies, not how far it moved, and alarm only after their
//! first window and the threshold's calibration (1,250 readings by
//! default); the residual test alarms on a sudden move from its 30th
//! reading on. Its limit is `residual_z`, raised to the `quantile` of the
//! stream's own last `history` residual z-scores once `calibration` of
//! them were seen (the same [`Threshold`] as the trees'): a stream whose
//! normal behaviour includes sudden steps (a light switched on and off)
//! alarms only on a move larger than its usual steps. Before that, and
//! after, the limit is also at least `residual_margin` (3) times the
//! `residual_margin_quantile` (0.95) of the stream's earlier residual
//! z-scores, from its first on: a stream whose ordinary readings already
//! jump (a badminton swing read by a smart watch) raises its own bar from
//! the start, as the level rule's record does, where a quiet stream's 95th
//! percentile (about 2.5 for Gaussian noise) stays below `residual_z`. On
//! UEA BasicMotions' changes of activity it removes 15 of the 26 alarms
//! before the changes, no onset caught before is missed, and NAB's score
//! is unchanged (`benches/nab_onset_rules.txt`).
//!
//! [`LevelDistance`] is the third rule, for short runs: the trees' threshold
//! needs `window + calibration` readings (1,250 by default), so a run of
//! about a thousand readings, or the first anomaly of a longer one, could
//! only be caught by the residual test's sudden moves. Until then, each
//! reading's distance from everything the run has seen, per feature
//! `|x - median| / (IQR / 1.349)` (a robust z-score, median and quartiles of
//! the feature's earlier readings, the scale Tukey's fences and the Hampel
//! identifier use: Hampel, "The influence curve and its role in robust
//! estimation", JASA 1974; Pearson, "Outliers in process modeling and
//! identification", IEEE Trans. Control Systems Technology 2002), combined
//! over the features as a root sum of squares (a diagonal Mahalanobis
//! distance, so that a valve closing that moves several sensors at once
//! adds up), alarms when it exceeds `level_margin` times the largest
//! distance of the readings before it, from reading `level_warmup` on. A
//! record of `n` exchangeable values comes with probability `1/n` (Chandler,
//! "The distribution and frequency of record values", JRSS B 1952), so an
//! independent stationary run sets about `ln(1250 / 200) ≈ 1.8` records
//! after the warm-up, fewer beyond the margin; an autocorrelated one is not
//! exchangeable, but the scale is the run's own spread, so its slow wander
//! widens the scale instead of alarming. Its weak side:
//! a shift that grows over several readings raises the record with it
//! (each reading a new record by less than the margin), and a run whose
//! first readings already held its largest excursion never alarms.
//!
//! The distance also counts how much each feature moves
//! (`level_dispersion`, 5 readings): the logarithm of its mean absolute
//! step over the last readings (the moving range of Shewhart's
//! individuals chart: Montgomery, "Introduction to Statistical Quality
//! Control", section 6.4), floored at the feature's resolution, scored
//! against its earlier values the same way, so that an onset inside levels
//! the run has seen (a vibrating machine that stops, a walk that becomes a
//! run) passes the record too.
//!
//! Measured on the 14 shipped NAB files cut to short runs (1,140 rows, the
//! first labelled anomaly at row 570, `benches/nab_score.py`): without the
//! level rule 2 of the 14 onsets caught within 50 readings and 1 with at
//! most one alarm before it; with it 8 and 7 (margin 1.3: 5 and 4; 1.2: 8
//! and 7 with 4 more alarms before the onsets). The alternatives tried (a
//! tabular CUSUM per feature, a record threshold on the residual z or on a
//! CUSUM of it, other scales and margins) are in
//! `benches/nab_short_rules.txt`. The dispersion term keeps the NAB short
//! runs at 7 of 14 (machine temperature's onset caught, the taxi's lost),
//! and raises UCI Occupancy's arrivals from 8 to 9 of 10 and UEA
//! BasicMotions' changes of activity (12 runs of 6 channels, the change at
//! reading 570) from 3 to 6 of 12, each caught with at most one alarm
//! before; the moving means, the linear dispersion, a separate record, a
//! record limit for the residual test and 2-of-3 confirmations tried
//! beside it are in `benches/nab_onset_rules.txt`.
//!
//! The residual and level rules are kept per device (the sample's
//! `device`; readings without one share one state): a pipeline reading
//! many devices (`sensors/+/occupancy`) scores each reading against its
//! own device's earlier readings, each device warming up on its own, so
//! that a switch between two rooms at different levels is not a jump. At
//! most `max_devices` devices are kept (the least recently seen forgotten
//! when a new one comes, counted). The trees and their threshold stay one
//! per pipeline ([`Scorer`] says why).
//!
//! An alarm more than `episode_gap` readings after the previous alarm opens
//! an episode ([`Scored::episode`]): `edgeloop anomaly` lists them and the
//! daemon counts them (`edgeloop_anomaly_episodes_total`) and marks each on
//! the timeline, one definition for both.
//!
//! Measured on the 14 shipped NAB files and UCI Occupancy
//! (`benches/nab_score.py`, README): the defaults alarm within 50 readings
//! of the first labelled anomaly in 9 runs (without the level rule 8; the
//! rules before, 2 in a row and a fixed residual limit: 6), with 45 alarms
//! before those onsets (40; 36) and a NAB score by alarms of 50.7 (48.1;
//! 38.8); on Occupancy's three files 53 alarms in 23 episodes (51 in 22;
//! 91 in 34).

use super::py_random::PyRandom;

/// `[pipelines.anomaly]`: anomaly scores of the readings the daemon
/// predicts, from the first reading, no labels needed. River's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Score readings (`anomaly_score` and `anomaly` in prediction
    /// messages).
    pub enabled: bool,
    pub trees: usize,
    pub height: u32,
    /// Readings per mass window; scores are 0 during the first.
    pub window: u32,
    pub seed: u64,
    /// Alarm above this quantile of the last `history` non-zero scores
    /// (0.999: chosen on the shipped NAB files, `benches/nab_score.py`).
    pub quantile: f64,
    /// Non-zero scores seen before the first alarm.
    pub calibration: usize,
    /// Non-zero scores the threshold is the quantile of (at least
    /// `calibration`).
    pub history: usize,
    /// Readings above the threshold among the last `persistence_window`
    /// (this one above, and among them) for an alarm (at least 1; 1: each
    /// reading above). Isolated spikes are the residual test's; on NAB's
    /// files 2 of 5 leaves 40 alarms before the onsets where 1 leaves 69
    /// (`benches/nab_score.txt`).
    pub persistence: usize,
    /// The run rule's window, in readings (at least `persistence`;
    /// `persistence`: that many in a row). 5: an anomaly that leaves and
    /// comes back alarms at its second reading above within 5.
    pub persistence_window: usize,
    /// Alarm when a feature's residual against its EWMA exceeds this many
    /// smoothed mean absolute deviations ([`ResidualZ`]; 10 MAD ≈ 8 σ of
    /// Gaussian noise) and the `quantile` of the stream's last `history`
    /// residual z-scores (once `calibration` were seen); 0 turns the test
    /// off (Half-Space Trees alone).
    pub residual_z: f64,
    /// Smoothing factor of the EWMA and of the MAD, in (0, 1] (0.05: a
    /// memory of about 20 readings).
    pub residual_alpha: f64,
    /// Readings learned before the residual test may alarm.
    pub residual_warmup: usize,
    /// The residual limit is also at least this many times the
    /// `residual_margin_quantile` of the stream's own earlier residual
    /// z-scores (its last `history` non-zero ones), from its first on, so
    /// that a spiky stream raises its own bar before `calibration` scores
    /// exist (at least 1; 0 turns it off). 3 with the 0.95 quantile: on
    /// UEA BasicMotions' changes of activity the alarms before the change
    /// fall from 26 to 11 (badminton swings), no onset caught before is
    /// missed, and NAB's score is unchanged; 2.5 to 4 and the 0.9 and 0.99
    /// quantiles measured beside it (`benches/nab_onset_rules.txt`).
    pub residual_margin: f64,
    /// The quantile of the earlier residual z-scores `residual_margin`
    /// multiplies, in (0, 1).
    pub residual_margin_quantile: f64,
    /// The level rule ([`LevelDistance`]), while the trees' threshold
    /// cannot exist yet (the first `window + calibration` readings): alarm
    /// when a reading's level distance exceeds this many times the largest
    /// of the readings before it (at least 1; 0 turns the rule off). 1.25:
    /// chosen on the short runs of the shipped NAB files
    /// (`benches/nab_score.txt`; 1.2 and 1.3 measured beside it).
    pub level_margin: f64,
    /// Readings learned before the level rule may alarm (at least 50, the
    /// history its quartiles need).
    pub level_warmup: usize,
    /// The level distance's dispersion term: per feature, the logarithm of
    /// the mean absolute step `|x_t - x_{t-1}|` over the last this many
    /// readings, scored against its own earlier values as the level is
    /// (0: off, the distance of the levels alone; at most `level_warmup`).
    /// 5: an onset that keeps the level but changes how much the readings
    /// move (a machine that stops or starts shaking) alarms; chosen on the
    /// short runs of the shipped NAB files, UCI Occupancy's arrivals and
    /// UEA BasicMotions' changes of activity together
    /// (`benches/nab_onset_rules.txt`, 3 to 20 measured beside it).
    pub level_dispersion: usize,
    /// An alarm opens an episode when the previous alarm is more than this
    /// many readings before it (at least 1).
    pub episode_gap: usize,
    /// Devices whose residual and level rules are kept (each device's
    /// readings, the sample's `device`, are scored against its own
    /// earlier readings); a new device beyond them forgets the least
    /// recently seen one (counted). At least 1. 256: a device's rules
    /// hold at most 198 KB at 5 features (at its 1,249th reading, before
    /// the level rule retires), so at most 51 MB, a tenth of a 0.5 GB
    /// board (BENCHMARKS.md, "Anomaly rules per device").
    pub max_devices: usize,
}

impl AnomalyConfig {
    /// Checks the settings, as the daemon does at start for
    /// `[pipelines.anomaly]` and `edgeloop anomaly` for its flags.
    ///
    /// # Errors
    /// The key (below `anomaly.`) and the reason of the first invalid value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let fail = |k, r: &str| Err((k, r.to_string()));
        if self.trees == 0 || self.window == 0 || self.calibration == 0 {
            return fail("trees", "trees, window and calibration at least 1");
        }
        if !(1..=20).contains(&self.height) {
            return fail("height", "must be in 1..=20");
        }
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return fail("quantile", "must be in (0, 1)");
        }
        if self.history < self.calibration {
            return fail("history", "must be at least `calibration`");
        }
        if self.persistence == 0 {
            return fail("persistence", "must be at least 1");
        }
        if self.persistence_window < self.persistence {
            return fail("persistence_window", "must be at least `persistence`");
        }
        if self.episode_gap == 0 {
            return fail("episode_gap", "must be at least 1");
        }
        if !(self.residual_z.is_finite() && self.residual_z >= 0.0) {
            return fail("residual_z", "must be at least 0 (0: off)");
        }
        if !(self.residual_alpha > 0.0 && self.residual_alpha <= 1.0) {
            return fail("residual_alpha", "must be in (0, 1]");
        }
        if !(self.residual_margin == 0.0
            || (self.residual_margin.is_finite() && self.residual_margin >= 1.0))
        {
            return fail("residual_margin", "must be 0 (off) or at least 1");
        }
        if !(self.residual_margin_quantile > 0.0 && self.residual_margin_quantile < 1.0) {
            return fail("residual_margin_quantile", "must be in (0, 1)");
        }
        if !(self.level_margin == 0.0
            || (self.level_margin.is_finite() && self.level_margin >= 1.0))
        {
            return fail("level_margin", "must be 0 (off) or at least 1");
        }
        if self.level_warmup < 50 {
            return fail("level_warmup", "must be at least 50");
        }
        if self.level_dispersion > self.level_warmup {
            return fail(
                "level_dispersion",
                "must be at most `level_warmup` (0: off)",
            );
        }
        if self.max_devices == 0 {
            return fail("max_devices", "must be at least 1");
        }
        Ok(())
    }
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trees: 10,
            height: 8,
            window: 250,
            seed: 42,
            quantile: 0.999,
            calibration: 1000,
            history: 5000,
            persistence: 2,
            persistence_window: 5,
            residual_z: 10.0,
            residual_alpha: 0.05,
            residual_warmup: 30,
            residual_margin: 3.0,
            residual_margin_quantile: 0.95,
            level_margin: 1.25,
            level_warmup: 200,
            level_dispersion: 5,
            episode_gap: 60,
            max_devices: 256,
        }
    }
}

/// Which rule raised an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmRule {
    /// The trees' score, above the threshold `persistence` times among the
    /// last `persistence_window` readings.
    Trees,
    /// A feature's residual z above the residual limit.
    Residual,
    /// Both at once.
    Both,
    /// The level distance above `level_margin` times its record, before
    /// the trees' threshold can exist, and the residual test quiet (with
    /// the residual test as well the alarm is the residual rule's, so that
    /// the per-rule counters, `trees` and `residual`, stay those rules').
    Level,
}

impl AlarmRule {
    /// `"trees"`, `"residual"`, `"both"` or `"level"`, as in the
    /// prediction messages, HTTP predict and `edgeloop anomaly --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trees => "trees",
            Self::Residual => "residual",
            Self::Both => "both",
            Self::Level => "level",
        }
    }

    fn of(trees: bool, level: bool, residual: bool) -> Option<Self> {
        match (trees, residual) {
            (true, true) => Some(Self::Both),
            (true, false) => Some(Self::Trees),
            (false, true) => Some(Self::Residual),
            (false, false) => level.then_some(Self::Level),
        }
    }
}

/// One reading as the [`Scorer`] saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The Half-Space Trees score in [0, 1] (River's).
    pub score: f64,
    /// The largest residual z over the features ([`ResidualZ::score`]).
    pub residual_z: f64,
    /// The feature of that residual z: its index in the features the
    /// scorer was made with (`None` while no feature has a scale).
    pub residual_feature: Option<usize>,
    /// The reading's level distance ([`LevelDistance`]; 0 once the level
    /// rule has retired, after `window + calibration` readings).
    pub level: f64,
    /// A rule alarmed: the score passed the threshold `persistence`
    /// times among the last `persistence_window` readings, the residual
    /// z passed the residual limit after the warm-up, or the level distance
    /// passed `level_margin` times its record.
    pub alarm: bool,
    /// The rule that alarmed (`None`: no alarm).
    pub rule: Option<AlarmRule>,
    /// The alarm opens an episode: no alarm in the `episode_gap` readings
    /// before it (always `false` for a query, [`Scorer::peek`]).
    pub episode: bool,
}

/// One pipeline's scorer in the daemon: the trees over the readings'
/// features in name order (River's order for a dictionary), the alarm
/// threshold, the residual and level rules of each device ([`Rules`]),
/// and the episodes.
///
/// The trees and their threshold are the pipeline's: they place a reading
/// among the regions the last window visited, which an interleaving of
/// devices does not move, and at the defaults they hold 0.30 MB (10
/// trees of 511 nodes, 168 KB, and 5,000 scores, 129 KB; BENCHMARKS.md),
/// more than a device's rules at their largest (198 KB at 5 features). The residual and level rules compare a reading with
/// the stream's own recent values and record, so a switch between two
/// devices reading at different levels would be a jump: they are kept per
/// device.
#[derive(Debug, Clone)]
pub struct Scorer {
    trees: ScaledHalfSpaceTrees,
    threshold: Threshold,
    /// The residual and level rules, per device.
    streams: Streams,
    /// `residual_z` of the configuration (0: off).
    residual_limit: f64,
    /// Reading index of each feature in name order.
    order: Vec<usize>,
    buf: Vec<f64>,
    episode_gap: u64,
    /// Readings learned, and the reading of the last alarm.
    seen: u64,
    last_alarm: Option<u64>,
}

impl Scorer {
    /// A scorer of readings with `features` (in the pipeline's order).
    pub fn new(cfg: &AnomalyConfig, features: &[String]) -> Self {
        let mut order: Vec<usize> = (0..features.len()).collect();
        order.sort_by(|&a, &b| features[a].cmp(&features[b]));
        Self {
            trees: ScaledHalfSpaceTrees::new(cfg.trees, cfg.height, cfg.window, cfg.seed),
            threshold: Threshold::new(cfg.quantile, cfg.calibration, cfg.history)
                .with_persistence(cfg.persistence, cfg.persistence_window),
            streams: Streams::new(Rules::new(cfg), cfg.max_devices),
            residual_limit: cfg.residual_z,
            order,
            buf: Vec::new(),
            episode_gap: cfg.episode_gap as u64,
            seen: 0,
            last_alarm: None,
        }
    }

    /// The score of `reading` without learning it.
    pub fn score(&self, reading: &[f32]) -> f64 {
        self.trees.score_one_scaled(&self.sorted_f32(reading))
    }

    /// `reading` of `device` (`None` or empty: no device) as its next
    /// reading would be seen, without learning it (a query, such as an
    /// HTTP predict row): its score, residual z, and whether either rule
    /// would alarm on it (`episode` is `false`). A device not seen yet is
    /// scored as a new one.
    pub fn peek(&self, device: Option<&str>, reading: &[f32]) -> Scored {
        let x = self.sorted_f32(reading);
        let score = self.trees.score_one_scaled(&x);
        let trees = self.threshold.would_alarm(score);
        let r = self.streams.get(device);
        let (residual_z, at) = r.residual.score_with_feature(&x);
        let residual = r.residual_alarm(self.residual_limit, residual_z);
        let level = r.level.distance(&x);
        let rule = AlarmRule::of(trees, r.level.alarm(level), residual);
        Scored {
            score,
            residual_z,
            residual_feature: at.map(|i| self.order[i]),
            level,
            alarm: rule.is_some(),
            rule,
            episode: false,
        }
    }

    fn sorted_f32(&self, reading: &[f32]) -> Vec<f64> {
        self.order
            .iter()
            .map(|&i| reading.get(i).map_or(f64::NAN, |&v| f64::from(v)))
            .collect()
    }

    /// Scores `reading` of `device` (`None` or empty: no device; those
    /// readings share one state), then learns it.
    pub fn score_then_learn(&mut self, device: Option<&str>, reading: &[f32]) -> Scored {
        self.buf.clear();
        self.buf.extend(
            self.order
                .iter()
                .map(|&i| reading.get(i).map_or(f64::NAN, |&v| f64::from(v))),
        );
        let x = std::mem::take(&mut self.buf);
        let s = self.observe_sorted(device, &x);
        self.buf = x;
        s
    }

    /// Scores `reading` of `device` (one value per feature, in the order
    /// the scorer was made with; NaN: missing), then learns it (`edgeloop
    /// anomaly`'s rows).
    pub fn score_then_learn_f64(&mut self, device: Option<&str>, reading: &[f64]) -> Scored {
        self.buf.clear();
        self.buf.extend(
            self.order
                .iter()
                .map(|&i| reading.get(i).copied().unwrap_or(f64::NAN)),
        );
        let x = std::mem::take(&mut self.buf);
        let s = self.observe_sorted(device, &x);
        self.buf = x;
        s
    }

    /// The alarm threshold of the trees' scores, once calibrated.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold.threshold()
    }

    /// The residual test's limit for `device`'s next reading (`None`:
    /// the readings without a device; see [`Scorer::peek`]).
    pub fn residual_limit(&self, device: Option<&str>) -> Option<f64> {
        self.streams.get(device).residual_limit(self.residual_limit)
    }

    /// Devices whose rules are kept (at most `max_devices`).
    pub fn devices(&self) -> usize {
        self.streams.devices.len()
    }

    /// Devices forgotten to keep `max_devices`.
    pub fn evicted(&self) -> u64 {
        self.streams.evicted
    }

    /// Every rule on `x` (features in name order) of `device`, score then
    /// learn.
    fn observe_sorted(&mut self, device: Option<&str>, x: &[f64]) -> Scored {
        let score = self.trees.score_one(x);
        self.trees.learn_one(x);
        let r = self.streams.get_mut(device);
        let (residual_z, at) = r.residual.score_with_feature(x);
        let residual = r.residual_alarm(self.residual_limit, residual_z);
        if r.residual.ready() {
            r.residual_threshold.observe(residual_z);
        }
        r.residual.learn_one(x);
        let trees = self.threshold.observe(score);
        let level = r.level.distance(x);
        let level_alarm = r.level.alarm(level);
        r.level.learn_one(x, level);
        let rule = AlarmRule::of(trees, level_alarm, residual);
        let episode = rule.is_some()
            && self
                .last_alarm
                .map_or(true, |last| self.seen - last > self.episode_gap);
        if rule.is_some() {
            self.last_alarm = Some(self.seen);
        }
        self.seen += 1;
        Scored {
            score,
            residual_z,
            residual_feature: at.map(|i| self.order[i]),
            level,
            alarm: rule.is_some(),
            rule,
            episode,
        }
    }
}

/// The residual and level rules' state of one stream: one device's
/// readings, or the readings without a device. Each warms up on its own
/// readings (`residual_warmup`, `level_warmup`, and the level rule retires
/// after its own `window + calibration`).
#[derive(Debug, Clone)]
struct Rules {
    residual: ResidualZ,
    /// The quantile of the residual z-scores (persistence 1).
    residual_threshold: Threshold,
    /// `residual_margin` (0: off) and `residual_margin_quantile`.
    residual_margin: f64,
    residual_margin_quantile: f64,
    level: LevelDistance,
}

impl Rules {
    fn new(cfg: &AnomalyConfig) -> Self {
        Self {
            residual: ResidualZ::new(cfg.residual_alpha, cfg.residual_warmup),
            residual_threshold: Threshold::new(cfg.quantile, cfg.calibration, cfg.history),
            residual_margin: cfg.residual_margin,
            residual_margin_quantile: cfg.residual_margin_quantile,
            level: LevelDistance::new(
                cfg.level_margin,
                cfg.level_warmup,
                (cfg.window as usize).saturating_add(cfg.calibration),
            )
            .with_dispersion(cfg.level_dispersion),
        }
    }

    /// The residual test's limit for the next reading: the largest of
    /// `limit` (`residual_z`), the `quantile` of the residual z-scores
    /// (once calibrated) and `residual_margin` times their
    /// `residual_margin_quantile` (once one exists) (`None`: the test is
    /// off).
    fn residual_limit(&self, limit: f64) -> Option<f64> {
        (limit > 0.0).then(|| {
            let mut limit = limit;
            if let Some(t) = self.residual_threshold.threshold() {
                limit = limit.max(t);
            }
            if self.residual_margin > 0.0 {
                if let Some(q) = self
                    .residual_threshold
                    .history_quantile(self.residual_margin_quantile)
                {
                    limit = limit.max(self.residual_margin * q);
                }
            }
            limit
        })
    }

    fn residual_alarm(&self, limit: f64, z: f64) -> bool {
        self.residual.ready() && self.residual_limit(limit).is_some_and(|limit| z > limit)
    }
}

/// Each device's [`Rules`], at most `max_devices` of them (a new device
/// beyond them forgets the least recently seen one, counted in
/// `evicted`), and the rules of the readings without a device.
#[derive(Debug, Clone)]
struct Streams {
    /// The rules of a device not seen yet.
    fresh: Rules,
    shared: Rules,
    /// Whether `shared` learned a reading.
    shared_learned: bool,
    /// Per device, its rules and when it was last seen (`tick`).
    devices: std::collections::HashMap<String, (Rules, u64)>,
    max_devices: usize,
    tick: u64,
    evicted: u64,
}

impl Streams {
    fn new(fresh: Rules, max_devices: usize) -> Self {
        Self {
            shared: fresh.clone(),
            shared_learned: false,
            fresh,
            devices: std::collections::HashMap::new(),
            max_devices: max_devices.max(1),
            tick: 0,
            evicted: 0,
        }
    }

    /// `device`'s rules (`None` or empty: the shared ones, or, while no
    /// reading without a device was learned and one device is kept, that
    /// device's: a query without a device on a pipeline of one device is
    /// that device's next reading; a device not seen yet: new rules).
    fn get(&self, device: Option<&str>) -> &Rules {
        match device.filter(|d| !d.is_empty()) {
            None if !self.shared_learned && self.devices.len() == 1 => self
                .devices
                .values()
                .next()
                .map_or(&self.shared, |(r, _)| r),
            None => &self.shared,
            Some(d) => self.devices.get(d).map_or(&self.fresh, |(r, _)| r),
        }
    }

    /// `device`'s rules to learn with, made for a new device (after the
    /// least recently seen one is forgotten, with `max_devices` kept).
    fn get_mut(&mut self, device: Option<&str>) -> &mut Rules {
        let Some(device) = device.filter(|d| !d.is_empty()) else {
            self.shared_learned = true;
            return &mut self.shared;
        };
        self.tick += 1;
        if !self.devices.contains_key(device) {
            if self.devices.len() >= self.max_devices {
                if let Some(oldest) = self
                    .devices
                    .iter()
                    .min_by_key(|(_, (_, seen))| *seen)
                    .map(|(k, _)| k.clone())
                {
                    self.devices.remove(&oldest);
                    self.evicted += 1;
                }
            }
            self.devices
                .insert(device.to_string(), (self.fresh.clone(), self.tick));
        }
        match self.devices.get_mut(device) {
            Some((rules, seen)) => {
                *seen = self.tick;
                rules
            }
            // Inserted above.
            None => &mut self.shared,
        }
    }
}

/// Smoothing factor of the long-run MAD that floors [`ResidualZ`]'s scale.
const LONG_RUN_ALPHA: f64 = 0.001;
/// The scale is at least this share of the long-run MAD.
const SCALE_FLOOR: f64 = 0.5;
/// … and at least this share of the EWMA's magnitude (at least 1).
const RELATIVE_FLOOR: f64 = 1e-3;

/// Each feature's residual against its EWMA in units of its smoothed mean
/// absolute deviation (see the module documentation for the sources).
///
/// Per feature, with `x_t` the reading, `m` the EWMA, `d` the smoothed MAD
/// and `D` the long-run MAD (smoothing factor 0.001): `m` starts at the
/// first value; the first residual `r = x_t - m` sets `d = D = |r|`; then
/// each reading updates `d += α (|r| - d)`, `D += 0.001 (|r| - D)` and
/// always `m += α r`. The score of a reading is the largest `|r| / max(d,
/// D / 2, q, 0.001 · max(|m|, 1))` over its features (0 while a feature has
/// no residual yet; missing values are skipped, neither scored nor
/// learned), `q` the feature's resolution: the smallest non-zero |x_t −
/// x_{t−1}| between two of its consecutive learned values so far (0 before
/// the first change). The floors keep a feature that has sat still for a
/// while (an idle counter, a stuck sensor, a room at night whose
/// temperature reads 20.39 for an hour) from turning its next ordinary
/// move into a z of thousands: a z counts at least in steps the sensor has
/// shown, and in thousandths of the feature's magnitude; a feature that
/// never moved (lights off all night, at 0) scores its first move in
/// thousandths of 1.
#[derive(Debug, Clone)]
pub struct ResidualZ {
    alpha: f64,
    warmup: usize,
    /// Per feature: EWMA (NaN before the first value), smoothed MAD and
    /// long-run MAD (NaN before the first residual).
    mean: Vec<f64>,
    mad: Vec<f64>,
    long: Vec<f64>,
    /// Per feature: the last learned value (NaN before one) and the
    /// smallest non-zero step between two consecutive ones (0 before one).
    last: Vec<f64>,
    resolution: Vec<f64>,
    seen: usize,
}

impl ResidualZ {
    /// Smoothing factor `alpha` in (0, 1]; alarms allowed once `warmup`
    /// readings were learned.
    pub fn new(alpha: f64, warmup: usize) -> Self {
        Self {
            alpha,
            warmup,
            mean: Vec::new(),
            mad: Vec::new(),
            long: Vec::new(),
            last: Vec::new(),
            resolution: Vec::new(),
            seen: 0,
        }
    }

    /// Whether the warm-up is over.
    pub fn ready(&self) -> bool {
        self.seen >= self.warmup
    }

    /// The largest residual z of `x` over its features (not learned).
    pub fn score(&self, x: &[f64]) -> f64 {
        self.score_with_feature(x).0
    }

    /// The largest residual z of `x` over its features, and the feature
    /// (the first of equal ones; `None` while no feature has a scale).
    pub fn score_with_feature(&self, x: &[f64]) -> (f64, Option<usize>) {
        let mut z: f64 = 0.0;
        let mut at = None;
        for (i, &v) in x.iter().enumerate() {
            let (Some(&m), Some(&d), Some(&long)) =
                (self.mean.get(i), self.mad.get(i), self.long.get(i))
            else {
                continue;
            };
            if d.is_nan() {
                // No residual yet: no scale.
                continue;
            }
            let scale = d
                .max(SCALE_FLOOR * long)
                .max(self.resolution[i])
                .max(RELATIVE_FLOOR * m.abs().max(1.0));
            if v.is_finite() && scale > 0.0 {
                let zi = (v - m).abs() / scale;
                if at.is_none() || zi > z {
                    z = zi;
                    at = Some(i);
                }
            }
        }
        (z, at)
    }

    /// Learns reading `x` (the same features, in the same order, each
    /// time).
    pub fn learn_one(&mut self, x: &[f64]) {
        if self.mean.len() < x.len() {
            self.mean.resize(x.len(), f64::NAN);
            self.mad.resize(x.len(), f64::NAN);
            self.long.resize(x.len(), f64::NAN);
            self.last.resize(x.len(), f64::NAN);
            self.resolution.resize(x.len(), 0.0);
        }
        for (i, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let step = (v - self.last[i]).abs();
            if step > 0.0 && (self.resolution[i] == 0.0 || step < self.resolution[i]) {
                self.resolution[i] = step;
            }
            self.last[i] = v;
            if self.mean[i].is_nan() {
                self.mean[i] = v;
                continue;
            }
            let r = v - self.mean[i];
            if self.mad[i].is_nan() {
                self.mad[i] = r.abs();
                self.long[i] = r.abs();
            } else {
                self.mad[i] += self.alpha * (r.abs() - self.mad[i]);
                self.long[i] += LONG_RUN_ALPHA * (r.abs() - self.long[i]);
            }
            self.mean[i] += self.alpha * r;
        }
        self.seen += 1;
    }
}

/// Readings a feature's history holds before its level distance counts.
const LEVEL_MIN_HISTORY: usize = 50;
/// The interquartile range of a Gaussian, in standard deviations.
const IQR_PER_SD: f64 = 1.349;

/// The level rule: how far a reading lies from everything the run has seen
/// so far, alarmed on as a new record by a margin; the alarm of a short
/// run, before the trees' threshold can exist (see the module
/// documentation for the sources).
///
/// Per feature `i` with at least 50 earlier values: `z_i = |x_i -
/// median_i| / ((q75_i - q25_i) / 1.349)`, the quartiles those of every
/// earlier value of the feature (numpy's linear interpolation); 0 where
/// the interquartile range is 0 or the value is missing. (The quartiles
/// of fewer readings of an autocorrelated stream are too narrow: the
/// distances they give set records that a later level shift does not
/// pass; on the NAB runs 10 and 50 alarm alike.)
///
/// With a dispersion window `k` ([`LevelDistance::with_dispersion`]), each
/// feature adds a second term scored the same way: its dispersion `s_i =
/// ln(max(mean of its last k steps |x_t - x_{t-1}|, q_i))`, `q_i` its
/// resolution (the smallest non-zero step it has shown, this one
/// included), against the dispersions of its earlier readings: `w_i = |s_i
/// - median| / (IQR / 1.349)` once 50 of them exist. A step is taken
/// between consecutive finite values (a missing value is skipped); a
/// reading has a dispersion once its feature has `k` steps and a non-zero
/// one among all. The mean absolute step is the moving range of
/// Shewhart's individuals chart (Montgomery, "Introduction to Statistical
/// Quality Control", 7th ed., section 6.4), robust to a slow wander of the
/// level; its logarithm makes a fall to a fifth as far from the usual as a
/// rise to five times (a vibrating machine that stops), and the floor at
/// the resolution keeps a sensor sitting on one value from a logarithm of
/// 0.
///
/// The reading's distance is `sqrt(Σ_i z_i² + w_i²)`, so that a move of
/// several features at once adds up. The record is the largest distance of
/// the readings before; a reading alarms when it is at least the
/// `warmup`-th and its distance exceeds `margin` times the record. The
/// rule retires after `until` readings (`window + calibration`: the trees'
/// threshold exists then), and drops its history.
#[derive(Debug, Clone)]
pub struct LevelDistance {
    margin: f64,
    warmup: usize,
    until: usize,
    /// The dispersion window `k` (0: no dispersion term).
    dispersion: usize,
    /// Per feature, its earlier finite values, sorted.
    history: Vec<Vec<f64>>,
    /// Per feature: the last finite value (NaN before one), its last
    /// `dispersion - 1` steps (oldest first), the smallest non-zero step (0
    /// before one) and the earlier dispersions, sorted.
    last: Vec<f64>,
    steps: Vec<std::collections::VecDeque<f64>>,
    resolution: Vec<f64>,
    spread: Vec<Vec<f64>>,
    record: f64,
    seen: usize,
}

/// `|v - median| / (IQR / 1.349)` of `v` against the sorted values `h`
/// (numpy's linear interpolation); `None` with fewer than
/// [`LEVEL_MIN_HISTORY`] values, a zero IQR or a missing `v`.
fn robust_z(h: &[f64], v: f64) -> Option<f64> {
    if h.len() < LEVEL_MIN_HISTORY || !v.is_finite() {
        return None;
    }
    let q = |p: f64| {
        let pos = p * (h.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        h[lo] + (h[hi] - h[lo]) * (pos - lo as f64)
    };
    let scale = (q(0.75) - q(0.25)) / IQR_PER_SD;
    (scale > 0.0).then(|| (v - q(0.5)).abs() / scale)
}

fn insert_sorted(h: &mut Vec<f64>, v: f64) {
    let at = h.partition_point(|&w| w < v);
    h.insert(at, v);
}

impl LevelDistance {
    /// Alarms above `margin` (0: off) times the record from the `warmup`-th
    /// reading on, until `until` readings were learned; levels alone.
    pub fn new(margin: f64, warmup: usize, until: usize) -> Self {
        Self {
            margin,
            warmup,
            until,
            dispersion: 0,
            history: Vec::new(),
            last: Vec::new(),
            steps: Vec::new(),
            resolution: Vec::new(),
            spread: Vec::new(),
            record: 0.0,
            seen: 0,
        }
    }

    /// With the dispersion term over the last `k` steps (0: none).
    pub fn with_dispersion(mut self, k: usize) -> Self {
        self.dispersion = k;
        self
    }

    fn active(&self) -> bool {
        self.margin > 0.0 && self.seen < self.until
    }

    /// Feature `i`'s dispersion if it read `v` next.
    fn dispersion_of(&self, i: usize, v: f64) -> Option<f64> {
        let k = self.dispersion;
        let last = *self.last.get(i)?;
        if k == 0 || !v.is_finite() || last.is_nan() {
            return None;
        }
        let steps = &self.steps[i];
        if steps.len() + 1 < k {
            return None;
        }
        let step = (v - last).abs();
        let mut sum = 0.0;
        for &s in steps.iter().skip(steps.len() + 1 - k) {
            sum += s;
        }
        sum += step;
        let mut q = self.resolution[i];
        if step > 0.0 && (q == 0.0 || step < q) {
            q = step;
        }
        (q > 0.0).then(|| (sum / k as f64).max(q).ln())
    }

    /// The level distance of `x` (not learned); 0 once retired.
    pub fn distance(&self, x: &[f64]) -> f64 {
        if !self.active() {
            return 0.0;
        }
        let mut sum = 0.0;
        for (i, &v) in x.iter().enumerate() {
            if let Some(z) = self.history.get(i).and_then(|h| robust_z(h, v)) {
                sum += z * z;
            }
            let w = self
                .dispersion_of(i, v)
                .and_then(|s| robust_z(&self.spread[i], s));
            if let Some(w) = w {
                sum += w * w;
            }
        }
        sum.sqrt()
    }

    /// Whether a reading of distance `d` alarms as the next reading.
    pub fn alarm(&self, d: f64) -> bool {
        self.active()
            && self.seen >= self.warmup
            && self.record > 0.0
            && d > self.margin * self.record
    }

    /// Learns `x`, whose distance was `d`.
    pub fn learn_one(&mut self, x: &[f64], d: f64) {
        if !self.active() {
            return;
        }
        self.seen += 1;
        if self.seen >= self.until {
            self.history = Vec::new();
            self.steps = Vec::new();
            self.spread = Vec::new();
            return;
        }
        if self.history.len() < x.len() {
            self.history.resize_with(x.len(), Vec::new);
            self.last.resize(x.len(), f64::NAN);
            self.steps.resize_with(x.len(), Default::default);
            self.resolution.resize(x.len(), 0.0);
            self.spread.resize_with(x.len(), Vec::new);
        }
        for (i, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            insert_sorted(&mut self.history[i], v);
            if self.dispersion == 0 {
                continue;
            }
            if let Some(s) = self.dispersion_of(i, v) {
                insert_sorted(&mut self.spread[i], s);
            }
            let last = self.last[i];
            self.last[i] = v;
            if last.is_nan() {
                continue;
            }
            let step = (v - last).abs();
            if step > 0.0 && (self.resolution[i] == 0.0 || step < self.resolution[i]) {
                self.resolution[i] = step;
            }
            let steps = &mut self.steps[i];
            steps.push_back(step);
            if steps.len() + 1 > self.dispersion {
                steps.pop_front();
            }
        }
        self.record = self.record.max(d);
    }
}

/// A tree stored in depth-first pre-order (River's build order).
#[derive(Debug, Clone)]
struct Tree {
    /// Per node: split feature (`usize::MAX` for a leaf), threshold,
    /// children.
    feature: Vec<usize>,
    threshold: Vec<f64>,
    left: Vec<u32>,
    right: Vec<u32>,
    l_mass: Vec<u32>,
    r_mass: Vec<u32>,
}

impl Tree {
    fn build(limits: &mut [(f64, f64)], height: u32, rng: &mut PyRandom) -> Self {
        let mut t = Tree {
            feature: Vec::new(),
            threshold: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
            l_mass: Vec::new(),
            r_mass: Vec::new(),
        };
        t.grow(limits, height, rng);
        t.l_mass = vec![0; t.feature.len()];
        t.r_mass = vec![0; t.feature.len()];
        t
    }

    /// `make_padded_tree`, recursively; returns the node's index.
    fn grow(&mut self, limits: &mut [(f64, f64)], height: u32, rng: &mut PyRandom) -> u32 {
        let id = self.feature.len();
        self.feature.push(usize::MAX);
        self.threshold.push(0.0);
        self.left.push(0);
        self.right.push(0);
        if height == 0 {
            return id as u32;
        }
        let widths: Vec<f64> = limits.iter().map(|(a, b)| b - a).collect();
        let on = rng.choice_weighted(&widths);
        let (a, b) = limits[on];
        let padding = 0.15;
        let at = rng.uniform(a + padding * (b - a), b - padding * (b - a));
        limits[on] = (a, at);
        let left = self.grow(limits, height - 1, rng);
        limits[on] = (at, b);
        let right = self.grow(limits, height - 1, rng);
        limits[on] = (a, b);
        self.feature[id] = on;
        self.threshold[id] = at;
        self.left[id] = left;
        self.right[id] = right;
        id as u32
    }

    /// The child of branch `node` that `x` goes to (`x < threshold`: left;
    /// NaN goes right, as Python's comparison).
    fn next(&self, node: usize, x: &[f64]) -> usize {
        if x[self.feature[node]] < self.threshold[node] {
            self.left[node] as usize
        } else {
            self.right[node] as usize
        }
    }
}

/// Half-Space Trees over features in [0, 1] (see the module
/// documentation). River's defaults: 10 trees, height 8, window 250.
#[derive(Debug, Clone)]
pub struct HalfSpaceTrees {
    n_trees: usize,
    height: u32,
    window_size: u32,
    rng: PyRandom,
    trees: Vec<Tree>,
    counter: u32,
    first_window: bool,
}

impl HalfSpaceTrees {
    /// River's `HalfSpaceTrees(n_trees, height, window_size, seed=seed)`
    /// with every feature's limits (0, 1).
    pub fn new(n_trees: usize, height: u32, window_size: u32, seed: u64) -> Self {
        Self {
            n_trees,
            height,
            window_size: window_size.max(1),
            rng: PyRandom::new(seed),
            trees: Vec::new(),
            counter: 0,
            first_window: true,
        }
    }

    /// Learns reading `x` (one value per feature, in the features' sorted
    /// order as River sorts dictionary keys). The trees are drawn at the
    /// first reading.
    pub fn learn_one(&mut self, x: &[f64]) {
        if self.trees.is_empty() {
            let mut limits = vec![(0.0, 1.0); x.len()];
            self.trees = (0..self.n_trees)
                .map(|_| Tree::build(&mut limits, self.height, &mut self.rng))
                .collect();
        }
        for t in &mut self.trees {
            let mut node = 0;
            for _ in 0..self.height {
                t.l_mass[node] += 1;
                node = t.next(node, x);
            }
            t.l_mass[node] += 1;
        }
        self.counter += 1;
        if self.counter == self.window_size {
            for t in &mut self.trees {
                std::mem::swap(&mut t.r_mass, &mut t.l_mass);
                t.l_mass.iter_mut().for_each(|m| *m = 0);
            }
            self.first_window = false;
            self.counter = 0;
        }
    }

    /// The anomaly score of `x` in [0, 1] (high: anomalous); 0 during the
    /// first window.
    pub fn score_one(&self, x: &[f64]) -> f64 {
        if self.first_window {
            return 0.0;
        }
        let size_limit = 0.1 * f64::from(self.window_size);
        let mut score = 0.0;
        for t in &self.trees {
            let mut node = 0;
            let mut depth_pow = 1.0;
            let mut stopped = false;
            for _ in 0..self.height {
                let r = f64::from(t.r_mass[node]);
                score += r * depth_pow;
                if r < size_limit {
                    stopped = true;
                    break;
                }
                node = t.next(node, x);
                depth_pow *= 2.0;
            }
            if !stopped {
                score += f64::from(t.r_mass[node]) * depth_pow;
            }
        }
        let max = self.n_trees as f64
            * f64::from(self.window_size)
            * (2f64.powi(self.height as i32 + 1) - 1.0);
        1.0 - score / max
    }
}

/// River's online `MinMaxScaler`: `(x - min) / (max - min)` over the
/// readings learned so far, 0 where they are all equal.
#[derive(Debug, Clone, Default)]
pub struct MinMaxScaler {
    min: Vec<f64>,
    max: Vec<f64>,
}

impl MinMaxScaler {
    /// Widens each feature's range to hold `x`.
    pub fn learn_one(&mut self, x: &[f64]) {
        if self.min.is_empty() {
            self.min = vec![f64::INFINITY; x.len()];
            self.max = vec![f64::NEG_INFINITY; x.len()];
        }
        for (i, &v) in x.iter().enumerate() {
            if v < self.min[i] {
                self.min[i] = v;
            }
            if v > self.max[i] {
                self.max[i] = v;
            }
        }
    }

    /// `x` scaled into `out`.
    pub fn transform_into(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(x.iter().enumerate().map(|(i, &v)| {
            let (lo, hi) = (
                self.min.get(i).copied().unwrap_or(f64::INFINITY),
                self.max.get(i).copied().unwrap_or(f64::NEG_INFINITY),
            );
            let d = hi - lo;
            if d != 0.0 {
                (v - lo) / d
            } else {
                0.0
            }
        }));
    }
}

/// River's `MinMaxScaler() | HalfSpaceTrees(...)`: learning updates the
/// scaler, then the trees with the reading scaled by the updated ranges;
/// scoring scales by the current ranges.
#[derive(Debug, Clone)]
pub struct ScaledHalfSpaceTrees {
    scaler: MinMaxScaler,
    trees: HalfSpaceTrees,
    buf: Vec<f64>,
}

impl ScaledHalfSpaceTrees {
    /// As [`HalfSpaceTrees::new`], behind the scaler.
    pub fn new(n_trees: usize, height: u32, window_size: u32, seed: u64) -> Self {
        Self {
            scaler: MinMaxScaler::default(),
            trees: HalfSpaceTrees::new(n_trees, height, window_size, seed),
            buf: Vec::new(),
        }
    }

    /// River's defaults (10 trees, height 8, window 250) with `seed`.
    pub fn with_defaults(seed: u64) -> Self {
        Self::new(10, 8, 250, seed)
    }

    pub fn learn_one(&mut self, x: &[f64]) {
        self.scaler.learn_one(x);
        let mut buf = std::mem::take(&mut self.buf);
        self.scaler.transform_into(x, &mut buf);
        self.trees.learn_one(&buf);
        self.buf = buf;
    }

    /// As [`ScaledHalfSpaceTrees::score_one`], without a reused buffer.
    pub fn score_one_scaled(&self, x: &[f64]) -> f64 {
        let mut buf = Vec::with_capacity(x.len());
        self.scaler.transform_into(x, &mut buf);
        self.trees.score_one(&buf)
    }

    pub fn score_one(&mut self, x: &[f64]) -> f64 {
        let mut buf = std::mem::take(&mut self.buf);
        self.scaler.transform_into(x, &mut buf);
        let s = self.trees.score_one(&buf);
        self.buf = buf;
        s
    }
}

/// Alarms from scores: the threshold is the `quantile` (linear
/// interpolation, numpy's default) of the last `history` non-zero scores
/// before the reading, once `calibration` non-zero scores have been seen; a
/// score above it is an alarm when at least `persistence` of the last
/// `window` readings, this one among them, were above (a run rule, see the
/// module documentation; 1 of any window: each score above). The threshold keeps learning, so a stream
/// that settles into a busier regime after calibration does not alarm on
/// every reading (on NAB's cloud-CPU file a threshold fixed after 1,000
/// scores raised 789 alarms; `benches/nab_score.py`).
#[derive(Debug, Clone)]
pub struct Threshold {
    quantile: f64,
    calibration: usize,
    history: usize,
    /// The last `history` non-zero scores, oldest first, and sorted.
    recent: std::collections::VecDeque<f64>,
    sorted: SortedScores,
    seen: usize,
    threshold: Option<f64>,
    persistence: usize,
    window: usize,
    /// Whether each of the last `window - 1` readings was above its
    /// threshold, oldest first, and how many were.
    above: std::collections::VecDeque<bool>,
    above_count: usize,
}

impl Threshold {
    /// `quantile` in (0, 1), over the last `history` scores, alarms after
    /// `calibration` scores (each at least 1; `history` at least
    /// `calibration`).
    pub fn new(quantile: f64, calibration: usize, history: usize) -> Self {
        let calibration = calibration.max(1);
        Self {
            quantile: quantile.clamp(0.0, 1.0),
            calibration,
            history: history.max(calibration),
            recent: std::collections::VecDeque::new(),
            sorted: SortedScores::default(),
            seen: 0,
            threshold: None,
            persistence: 1,
            window: 1,
            above: std::collections::VecDeque::new(),
            above_count: 0,
        }
    }

    /// An alarm only when at least `persistence` of the last `window`
    /// readings (this one above, and among them) scored above their
    /// thresholds (`persistence` at least 1, 1: every such reading;
    /// `window` at least `persistence`, `persistence`: in a row).
    pub fn with_persistence(mut self, persistence: usize, window: usize) -> Self {
        self.persistence = persistence.max(1);
        self.window = window.max(self.persistence);
        self
    }

    /// Whether `score` would be an alarm as the next reading (not learned).
    pub fn would_alarm(&self, score: f64) -> bool {
        self.threshold.is_some_and(|t| score > t) && self.above_count + 1 >= self.persistence
    }

    /// The threshold the next score is compared with, once calibrated.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// The `p` quantile of the scores held (the last `history` non-zero
    /// ones; numpy's linear interpolation), before calibration as well
    /// (`None` before the first).
    pub fn history_quantile(&self, p: f64) -> Option<f64> {
        let s = &self.sorted;
        if s.len() == 0 {
            return None;
        }
        let pos = p.clamp(0.0, 1.0) * (s.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let (a, b) = (s.get(lo)?, s.get(hi)?);
        Some(a + (b - a) * (pos - lo as f64))
    }

    /// Whether `score` is an alarm (never during the first window, whose
    /// scores are 0, nor during calibration; with persistence, only a
    /// reading above with at least `persistence - 1` of the `window - 1`
    /// before it above); then learns it.
    pub fn observe(&mut self, score: f64) -> bool {
        let alarm = self.would_alarm(score);
        let above = self.threshold.is_some_and(|t| score > t);
        if self.window > 1 {
            self.above.push_back(above);
            self.above_count += usize::from(above);
            if self.above.len() >= self.window {
                if let Some(true) = self.above.pop_front() {
                    self.above_count -= 1;
                }
            }
        }
        if score > 0.0 {
            self.sorted.insert(score);
            self.recent.push_back(score);
            if self.recent.len() > self.history {
                if let Some(old) = self.recent.pop_front() {
                    self.sorted.remove(old);
                }
            }
            self.seen += 1;
            if self.seen >= self.calibration {
                let s = &self.sorted;
                let pos = self.quantile * (s.len() - 1) as f64;
                let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                if let (Some(a), Some(b)) = (s.get(lo), s.get(hi)) {
                    self.threshold = Some(a + (b - a) * (pos - lo as f64));
                }
            }
        }
        alarm
    }
}

/// Most values a chunk of [`SortedScores`] holds before it splits in two.
const CHUNK_MAX: usize = 128;

/// A sorted multiset of scores in chunks of at most [`CHUNK_MAX`] values
/// (each chunk sorted, the chunks in order, none empty), so that an insert
/// or a removal moves at most one chunk's values, not the whole history's
/// (one sorted `Vec` of 5,000 scores moved 40 KB per reading, about 3 µs).
#[derive(Debug, Clone, Default)]
struct SortedScores {
    chunks: Vec<Vec<f64>>,
    len: usize,
}

impl SortedScores {
    fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds the first value not below `x`, if any.
    fn chunk_of(&self, x: f64) -> usize {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|&last| last < x))
    }

    /// Adds `x` before the values equal to it (as `Vec::insert` at
    /// `partition_point(|v| v < x)`).
    fn insert(&mut self, x: f64) {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(CHUNK_MAX + 1));
        }
        let c = self.chunk_of(x).min(self.chunks.len() - 1);
        let chunk = &mut self.chunks[c];
        let at = chunk.partition_point(|&v| v < x);
        chunk.insert(at, x);
        if chunk.len() > CHUNK_MAX {
            let mut tail = Vec::with_capacity(CHUNK_MAX + 1);
            tail.extend(chunk.drain(CHUNK_MAX / 2..));
            self.chunks.insert(c + 1, tail);
        }
        self.len += 1;
    }

    /// Removes one value equal to `x`, if there is one.
    fn remove(&mut self, x: f64) {
        let c = self.chunk_of(x);
        let Some(chunk) = self.chunks.get_mut(c) else {
            return;
        };
        let at = chunk.partition_point(|&v| v < x);
        if chunk.get(at) == Some(&x) {
            chunk.remove(at);
            self.len -= 1;
            if chunk.is_empty() {
                self.chunks.remove(c);
            }
        }
    }

    /// The `i`-th smallest value (from 0), counted from the nearer end.
    fn get(&self, i: usize) -> Option<f64> {
        if i >= self.len {
            return None;
        }
        if 2 * i < self.len {
            let mut i = i;
            for c in &self.chunks {
                if i < c.len() {
                    return Some(c[i]);
                }
                i -= c.len();
            }
        } else {
            let mut j = self.len - 1 - i;
            for c in self.chunks.iter().rev() {
                if j < c.len() {
                    return Some(c[c.len() - 1 - j]);
                }
                j -= c.len();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `max_devices` 2: a third device forgets the least recently seen
    /// one, counted, whose next reading is then a new device's (no residual
    /// scale yet: residual z 0); readings without a device share one
    /// state, neither counted among the devices nor evicted.
    #[test]
    fn devices_beyond_max_devices_forget_the_least_recently_seen() {
        let cfg = AnomalyConfig {
            max_devices: 2,
            ..AnomalyConfig::default()
        };
        let mut s = Scorer::new(&cfg, &["x".to_string()]);
        for v in [1.0, 2.0, 3.0] {
            s.score_then_learn_f64(Some("a"), &[v]);
            s.score_then_learn_f64(Some("b"), &[v + 100.0]);
            s.score_then_learn_f64(None, &[v + 50.0]);
            s.score_then_learn_f64(Some(""), &[v + 50.0]);
        }
        assert_eq!((s.devices(), s.evicted()), (2, 0));
        // b is seen after a: a is the least recently seen.
        s.score_then_learn_f64(Some("c"), &[7.0]);
        assert_eq!((s.devices(), s.evicted()), (2, 1));
        assert!(s.peek(Some("b"), &[104.0]).residual_z > 0.0);
        assert_eq!(s.peek(Some("a"), &[4.0]).residual_z, 0.0);
        assert_eq!(s.score_then_learn_f64(Some("a"), &[4.0]).residual_z, 0.0);
        // a came back: b, now the least recently seen, is forgotten.
        assert_eq!((s.devices(), s.evicted()), (2, 2));
        assert_eq!(s.peek(Some("b"), &[104.0]).residual_z, 0.0);
        // The shared state learned its 6 readings all along.
        assert!(s.peek(None, &[54.0]).residual_z > 0.0);
    }

    /// A query without a device (an HTTP predict row without `"device"`)
    /// on a pipeline whose readings all came from one device is scored as
    /// that device's next reading (it was scored against a state that had
    /// learned nothing: residual z 0 after 3,000 readings); with two
    /// devices, or once a reading without a device was learned, the shared
    /// state.
    #[test]
    fn a_query_without_a_device_on_one_device_is_that_devices() {
        let mut s = Scorer::new(&AnomalyConfig::default(), &["x".to_string()]);
        for i in 0..100 {
            s.score_then_learn_f64(Some("a"), &[f64::from(i % 7)]);
        }
        let alone = s.peek(Some("a"), &[40.0]);
        assert!(alone.residual_z > 0.0);
        assert_eq!(s.peek(None, &[40.0]), alone);
        assert_eq!(s.residual_limit(None), s.residual_limit(Some("a")));
        s.score_then_learn_f64(Some("b"), &[1.0]);
        assert_eq!(s.peek(None, &[40.0]).residual_z, 0.0);
        let mut s = Scorer::new(&AnomalyConfig::default(), &["x".to_string()]);
        s.score_then_learn_f64(Some("a"), &[1.0]);
        s.score_then_learn_f64(Some("a"), &[2.0]);
        s.score_then_learn_f64(None, &[3.0]);
        assert_eq!(s.peek(None, &[40.0]).residual_z, 0.0);
    }

    /// The chunked multiset against one sorted `Vec` (the model): the same
    /// values in the same order after every insert and removal, across
    /// chunk splits and emptied chunks, duplicates included.
    #[test]
    fn sorted_scores_equal_a_sorted_vec() {
        let mut ours = SortedScores::default();
        let mut model: Vec<f64> = Vec::new();
        let mut recent = std::collections::VecDeque::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 0..20_000 {
            // Few distinct values early (duplicates), many later.
            let x = if step < 3_000 {
                f64::from(rng.u8(0..20)) / 20.0
            } else {
                rng.f64()
            };
            ours.insert(x);
            let at = model.partition_point(|&v| v < x);
            model.insert(at, x);
            recent.push_back(x);
            if recent.len() > 1_000 + (step % 700) {
                for _ in 0..2 {
                    let old = recent.pop_front().unwrap();
                    ours.remove(old);
                    let at = model.partition_point(|&v| v < old);
                    model.remove(at);
                }
            }
            assert_eq!(ours.len(), model.len());
            if step % 997 == 0 {
                let all: Vec<f64> = (0..ours.len()).map(|i| ours.get(i).unwrap()).collect();
                assert_eq!(all, model, "step {step}");
                assert!(ours
                    .chunks
                    .iter()
                    .all(|c| !c.is_empty() && c.len() <= CHUNK_MAX));
            }
            for i in [
                0,
                model.len() / 3,
                model.len() * 999 / 1000,
                model.len() - 1,
            ] {
                assert_eq!(ours.get(i), model.get(i).copied(), "step {step}, {i}");
            }
        }
        assert_eq!(ours.get(model.len()), None);
        // A value never inserted is not removed.
        ours.remove(2.0);
        assert_eq!(ours.len(), model.len());
    }

    #[test]
    fn persistence_needs_readings_in_a_row_above_the_threshold() {
        let mut t = Threshold::new(0.5, 4, 100).with_persistence(2, 2);
        for s in [0.1, 0.2, 0.3, 0.4] {
            assert!(!t.observe(s));
        }
        // numpy.quantile([0.1, 0.2, 0.3, 0.4], 0.5) == 0.25: above, the
        // first in a row.
        assert!(!t.observe(0.9));
        // numpy.quantile([0.1, 0.2, 0.3, 0.4, 0.9], 0.5) == 0.3: the second.
        assert!(t.observe(0.8));
        // 0.35, the third.
        assert!(t.observe(0.7));
        // 0.4: below, the run ends; then 0.35 and a first again.
        assert!(!t.observe(0.1));
        assert!((t.threshold().unwrap() - 0.35).abs() < 1e-15);
        assert!(!t.observe(0.95));
    }

    /// 2 of 4: a reading above alarms when one of the 3 before it was
    /// above too, in a row or not (numpy.quantile(..., 0.5) by hand).
    #[test]
    fn persistence_counts_readings_above_within_the_window() {
        let mut t = Threshold::new(0.5, 4, 100).with_persistence(2, 4);
        for s in [0.1, 0.2, 0.3, 0.4] {
            assert!(!t.observe(s));
        }
        // Thresholds 0.25, 0.3, 0.25, 0.2, 0.25: above, below, below, above
        // (the first 3 readings back), above.
        assert!(!t.observe(0.9));
        assert!(!t.observe(0.1));
        assert!(!t.observe(0.2));
        assert!(t.observe(0.8));
        assert!(t.observe(0.7));
        // Two readings below; then 0.95 is above with 0.7 three back.
        assert!(!t.observe(0.1));
        assert!(!t.observe(0.1));
        assert!((t.threshold().unwrap() - 0.2).abs() < 1e-15);
        assert!(t.would_alarm(0.95));
        assert!(t.observe(0.95));
        // A lone reading above, 4 back from the last: not an alarm.
        for s in [0.1, 0.1, 0.1] {
            assert!(!t.observe(s));
        }
        assert!(!t.would_alarm(0.99));
    }

    /// The level rule by hand (numpy.quantile): no distance before 50
    /// readings, no alarm before a positive record, an alarm only above
    /// the margin times the record, nothing once retired.
    #[test]
    fn level_distance_against_the_record() {
        let mut l = LevelDistance::new(1.25, 50, 53);
        for i in 0..50 {
            let x = [f64::from(i)];
            assert_eq!(l.distance(&x), 0.0);
            l.learn_one(&x, 0.0);
        }
        // numpy.quantile(range(50), [0.25, 0.5, 0.75]) == [12.25, 24.5,
        // 36.75]: (100 - 24.5) / (24.5 / 1.349).
        let d = l.distance(&[100.0]);
        assert!((d - 4.1571224489795915).abs() < 1e-12, "{d}");
        // The record is still 0: no alarm.
        assert!(!l.alarm(d));
        l.learn_one(&[100.0], d);
        // With 100 among them, quartiles [12.5, 25, 37.5]: 120 is 5.1262,
        // under 1.25 x 4.157 = 5.196; 122 is 5.234, above.
        assert!(!l.alarm(l.distance(&[120.0])));
        assert!((l.distance(&[122.0]) - 5.23412).abs() < 1e-12);
        assert!(l.alarm(l.distance(&[122.0])));
        // A missing value counts 0.
        assert_eq!(l.distance(&[f64::NAN]), 0.0);
        l.learn_one(&[1.0], 0.1);
        l.learn_one(&[2.0], 0.1);
        // 53 readings learned: retired.
        assert_eq!(l.distance(&[1e9]), 0.0);
        assert!(!l.alarm(1e9));
        // Margin 0: off.
        let off = LevelDistance::new(0.0, 50, 1000);
        assert!(!off.alarm(1e9));
    }

    /// The dispersion term's value by hand, window 2: ln(max(mean of the
    /// last 2 steps, the smallest non-zero step)).
    #[test]
    fn dispersion_is_the_log_mean_step_floored_at_the_resolution() {
        let mut l = LevelDistance::new(1.25, 50, 1000).with_dispersion(2);
        l.learn_one(&[5.0], 0.0);
        // One step with this reading: not yet 2.
        assert_eq!(l.dispersion_of(0, 6.0), None);
        l.learn_one(&[5.0], 0.0);
        // Steps 0 and 0: no non-zero step, no ln 0.
        assert_eq!(l.dispersion_of(0, 5.0), None);
        // Steps 0 and 0.5: mean 0.25, floored at the resolution 0.5.
        assert_eq!(l.dispersion_of(0, 5.5), Some(0.5f64.ln()));
        l.learn_one(&[5.5], 0.0);
        // A missing value is neither a step nor scored.
        assert_eq!(l.dispersion_of(0, f64::NAN), None);
        l.learn_one(&[f64::NAN], 0.0);
        // Steps 0.5 and 2.5: mean 1.5 over the resolution 0.5.
        assert_eq!(l.dispersion_of(0, 8.0), Some(1.5f64.ln()));
        // Window 0: no term.
        let mut off = LevelDistance::new(1.25, 50, 1000);
        off.learn_one(&[1.0], 0.0);
        off.learn_one(&[2.0], 0.0);
        assert_eq!(off.dispersion_of(0, 4.0), None);
    }

    /// The residual z by hand: EWMA 0.5, warm-up 2.
    #[test]
    fn residual_z_against_the_ewma_in_smoothed_mads() {
        let mut r = ResidualZ::new(0.5, 2);
        assert_eq!(r.score(&[1.0]), 0.0);
        r.learn_one(&[1.0]);
        // A mean, no scale yet.
        assert_eq!(r.score(&[3.0]), 0.0);
        assert!(!r.ready());
        r.learn_one(&[3.0]);
        // Residual 2: d = D = 2, m = 2.
        assert!(r.ready());
        assert_eq!(r.score(&[8.0]), 3.0);
        r.learn_one(&[2.0]);
        // Residual 0: d = 1, D = 1.998, m = 2; scale max(1, 0.999).
        assert_eq!(r.score(&[5.0]), 3.0);
        // A missing value is neither scored nor learned.
        assert_eq!(r.score(&[f64::NAN]), 0.0);
        r.learn_one(&[f64::NAN]);
        assert_eq!(r.score(&[5.0]), 3.0);
        // A feature that sat still: d = D = 0, no resolution yet, so the
        // scale is 0.001 of the mean's magnitude (0.005 at 5.0) …
        let mut still = ResidualZ::new(0.5, 1);
        for _ in 0..3 {
            still.learn_one(&[5.0]);
        }
        assert!((still.score(&[5.1]) - 0.1 / 0.005).abs() < 1e-9);
        // … then its resolution, the step 0.1 it has shown: residual 0.1,
        // d = 0.05, D = 0.0001, m = 5.05; scale max(0.05, 0.00005, 0.1,
        // 0.00505) = 0.1.
        still.learn_one(&[5.1]);
        assert!((still.score(&[5.25]) - 2.0).abs() < 1e-9);
        // At 0 the magnitude floor is 0.001 (of at least 1).
        let mut zero = ResidualZ::new(0.5, 1);
        zero.learn_one(&[0.0]);
        zero.learn_one(&[0.0]);
        assert!((zero.score(&[0.5]) - 500.0).abs() < 1e-9);
    }

    #[test]
    fn threshold_is_the_interpolated_quantile() {
        let mut t = Threshold::new(0.5, 4, 4);
        for s in [0.0, 0.4, 0.1, 0.3] {
            assert!(!t.observe(s));
        }
        assert_eq!(t.threshold(), None);
        assert!(!t.observe(0.2));
        // numpy.quantile([0.1, 0.2, 0.3, 0.4], 0.5) == 0.25
        assert!((t.threshold().unwrap() - 0.25).abs() < 1e-15);
        assert!(t.observe(0.26));
        // 0.4, the oldest, left the history: numpy.quantile([0.1, 0.3,
        // 0.2, 0.26], 0.5) == 0.23
        assert!((t.threshold().unwrap() - 0.23).abs() < 1e-15);
        assert!(t.observe(0.25));
        assert!(!t.observe(0.0));
        // numpy.quantile([0.3, 0.2, 0.26, 0.25], 0.5) == 0.255
        assert!((t.threshold().unwrap() - 0.255).abs() < 1e-15);
        assert!(!t.observe(0.255));
    }
}
