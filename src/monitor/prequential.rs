//! `edgeloop evaluate --prequential`: replays a labelled CSV stream in row
//! order, test then train, through the continuous-learning loop
//! ([`super::continual`]), beside a frozen first model, and reports accuracy
//! over time with the drift alarms and promotions marked; or through one
//! online learner ([`run_online`], `--family online_logistic` or
//! `hoeffding_tree`), test then train on every row.

use std::path::PathBuf;

use serde::Serialize;

use super::continual::{ContinualConfig, ContinualLoop, Decision};
use crate::features::temporal::{Temporal, TemporalConfig};
use crate::learn::online::{OnlineClassifier, OnlineError, OnlineFamily};

/// Lags of each reading the `online_logistic` learner sees by default
/// (`evaluate --prequential`): on the regime stream 0.886 -> 0.908, with
/// noise on its prices 0.883 -> 0.895, gas 0.970 -> 0.973; occupancy equal;
/// gas batch 1 -0.2 point, SEA -0.7, RandomRBFDrift -1.5 (where the loop or
/// the forest serves). The tree families do not see lags.
pub const DEFAULT_LAGS: usize = 2;

/// `evaluate --prequential`'s online learners beside the loop by default.
/// Measured (BENCHMARKS.md, "evaluate --prequential defaults"): the
/// logistic learner is the strongest on many-feature, class-grouped
/// streams (gas 0.973 against 0.960) and, with its 2 lags, on the regime
/// stream (0.908 against 0.893), the forest on non-linear and drifting ones
/// (Agrawal 0.903 against 0.537, RandomRBFDrift 0.687 against 0.555); with
/// both, the served accuracy is within half a point of the better one on
/// every stream measured.
pub const DEFAULT_ONLINE: &str = "online_logistic,arf";
/// Whether the online learners see the last known label by default.
/// Measured alone (`--family F --last-label true|false`): on the
/// autocorrelated streams +0.5 to +1.7 points for `online_logistic` (gas,
/// gas batch 1, occupancy, the regime stream), +0.5 to +6.5 for `arf`
/// (-0.1 on the regime stream), up to +17.6 for the trees on gas; on
/// River's independent generators -0.1 to -0.4 for `online_logistic`,
/// -0.4 to -3.6 for `arf` (served by default against the forest without the
/// last label: RandomRBFDrift 0.686 against 0.723, Agrawal 0.900 against
/// 0.908, the two losses measured).
pub const DEFAULT_LAST_LABEL: bool = true;
/// Whether the previous label (no-change) is a learner of the choice by
/// default: on streams where a label lasts (occupancy, gas batch 1) it is
/// the one to beat.
pub const DEFAULT_NO_CHANGE: bool = true;

/// What to replay.
#[derive(Debug, Clone)]
pub struct PrequentialOptions {
    pub file: PathBuf,
    /// Label column.
    pub label: String,
    /// Feature columns; empty: every other column whose first value is numeric.
    pub features: Vec<String>,
    pub loop_config: ContinualConfig,
    /// Segments of the report.
    pub segments: usize,
    /// Online learners beside the loop ([`ServeChoice`]): all predict every
    /// row, and the one more accurate over the recent rows serves. Empty:
    /// the loop alone (with `no_change`, beside it).
    pub online: Vec<OnlineFamily>,
    /// The previous row's label as a learner of the choice too (River's
    /// `dummy.NoChangeClassifier`).
    pub no_change: bool,
    /// Seed of a randomised online family.
    pub seed: u64,
    /// Temporal features of the online learners (the file is one device's
    /// stream, in row order): `online_logistic` sees them all, the tree
    /// families the readings and, with `last_label`, the last label only
    /// (lags, deltas and rolling statistics cost the forest 4-17 points on
    /// River's independent generators, measured; a linear model needs them
    /// to weigh the recent past). The loop sees the readings as stored.
    pub temporal: TemporalConfig,
    /// Keep each row's predictions in [`PrequentialReport::record`].
    pub record: bool,
}

/// Errors of the replay.
#[derive(Debug, thiserror::Error)]
pub enum PrequentialError {
    #[error("{file}: {reason}")]
    Input { file: String, reason: String },
}

/// `reason` without the `{file}: ` the CSV reader puts in front of its
/// errors, which [`PrequentialError::Input`] writes itself (the message
/// named the file twice: `f.csv: f.csv: no column …`).
pub(crate) fn without_file(file: &str, reason: String) -> String {
    match reason.strip_prefix(file).and_then(|r| r.strip_prefix(": ")) {
        Some(rest) => rest.to_string(),
        None => reason,
    }
}

/// Accuracy over one stretch of the stream.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Row range [start, end).
    pub start: u64,
    pub end: u64,
    /// Rows scored in it (both models had a prediction).
    pub scored: u64,
    pub loop_accuracy: Option<f64>,
    pub frozen_accuracy: Option<f64>,
    /// Each online learner's accuracy over the rows it predicted, and that
    /// of the served predictions ([`ServeChoice`]) over the rows with one.
    pub online_accuracy: Vec<Option<f64>>,
    pub served_accuracy: Option<f64>,
    pub alarms: u64,
    pub promotions: u64,
}

/// One row's predictions (`None`: that learner had none yet).
#[derive(Debug, Clone, Serialize)]
pub struct RowOutcome {
    pub label: String,
    /// In the order of [`PrequentialReport::learners`].
    pub learners: Vec<Option<String>>,
    pub served: Option<String>,
}

/// A change of the served learner.
#[derive(Debug, Clone, Serialize)]
pub struct Switch {
    pub row: u64,
    /// The learner serving from this row on.
    pub serves: String,
}

/// The report (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct PrequentialReport {
    pub file: String,
    pub rows: u64,
    pub features: Vec<String>,
    /// Rows scored: after the first model existed.
    pub scored: u64,
    pub loop_accuracy: Option<f64>,
    pub frozen_accuracy: Option<f64>,
    /// The online learners beside the loop and their accuracies.
    pub online: Vec<String>,
    pub online_accuracy: Vec<Option<f64>>,
    /// Whether the previous row's label was a learner of the choice.
    pub no_change: bool,
    /// The learners of the choice, in order (`loop`, the online ones,
    /// `no_change`).
    pub learners: Vec<String>,
    /// The served predictions' accuracy over the rows with one (the
    /// headline: what the daemon would have answered).
    pub served_accuracy: Option<f64>,
    /// Rows with a served prediction.
    pub served_scored: u64,
    /// The baseline that predicts each row's label as the previous row's
    /// (over rows 1..).
    pub previous_label_accuracy: Option<f64>,
    /// The online learner's temporal features and the width of its rows.
    pub temporal: TemporalConfig,
    pub online_features: usize,
    /// Where the served learner changed.
    pub switches: Vec<Switch>,
    pub segments: Vec<Segment>,
    /// Row indices of the drift alarms of the loop.
    pub alarms: Vec<u64>,
    /// Promotions (and refusals) of the loop, with their reasons.
    pub decisions: Vec<Decision>,
    /// Largest champion of the loop, as its ONNX bytes (the size it serves at).
    pub model_bytes_peak: u64,
    /// Largest training memory held by the loop (window + reservoir rows), bytes.
    pub loop_data_bytes_peak: u64,
    /// Rows replayed per second of wall time (loop, frozen model, online
    /// learner and choice; reading the file excluded), and that time.
    pub rows_per_second: f64,
    pub seconds: f64,
    /// Peak resident memory of the process at the end (`VmHWM`, Linux; the
    /// file as read included), bytes.
    pub peak_rss_bytes: Option<u64>,
    pub loop_config: ContinualConfig,
    /// Each row's predictions, with `record` (else empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub record: Vec<RowOutcome>,
}

/// Which of `n` learners serves: the one whose predictions were right most
/// often over the last [`ServeChoice::WINDOW`] recorded rows, with
/// hysteresis (another must lead the serving one by more than
/// [`ServeChoice::MARGIN`]; ties keep the serving one). A learner without a
/// prediction for a row is stood in for by the first in order with one.
/// Two learners (the daemon's batch champion and online learner) use
/// [`ServeChoice::new`], [`ServeChoice::pick`] and [`ServeChoice::record`].
#[derive(Debug, Clone)]
pub struct ServeChoice {
    /// Recent outcomes, one bit per learner (true = right), oldest first.
    recent: std::collections::VecDeque<Vec<bool>>,
    hits: Vec<usize>,
    /// Which serves.
    serving: usize,
}

impl Default for ServeChoice {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeChoice {
    /// Rows of the recent record.
    pub const WINDOW: usize = 200;
    /// Lead (in accuracy over the window) needed to switch.
    pub const MARGIN: f64 = 0.02;

    /// Two learners, the first serving.
    pub fn new() -> Self {
        Self::among(2, 0)
    }

    /// `n` learners (at least 1), learner `start` serving.
    pub fn among(n: usize, start: usize) -> Self {
        let n = n.max(1);
        Self {
            recent: std::collections::VecDeque::with_capacity(Self::WINDOW),
            hits: vec![0; n],
            serving: start.min(n - 1),
        }
    }

    /// Two learners, the second serving when `second`.
    pub fn starting_with(second: bool) -> Self {
        Self::among(2, usize::from(second))
    }

    /// Rows in the recent record (at most [`ServeChoice::WINDOW`]).
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Which learner serves now.
    pub fn serving(&self) -> usize {
        self.serving
    }

    /// Whether the second learner serves now.
    pub fn second_serves(&self) -> bool {
        self.serving == 1
    }

    /// The served one of two predictions.
    pub fn pick<T>(&self, first: Option<T>, second: Option<T>) -> Option<T> {
        if self.serving == 1 {
            second.or(first)
        } else {
            first.or(second)
        }
    }

    /// The served one of the learners' predictions (`[n]`).
    pub fn pick_of<T: Clone>(&self, predictions: &[Option<T>]) -> Option<T> {
        predictions
            .get(self.serving)
            .cloned()
            .flatten()
            .or_else(|| predictions.iter().find_map(|p| p.clone()))
    }

    /// Records whether each of two was right on a row both predicted; true
    /// when the server changed.
    pub fn record(&mut self, first_right: bool, second_right: bool) -> bool {
        self.record_all(&[first_right, second_right])
    }

    /// Records whether each learner was right on a row (`[n]`); true when
    /// the server changed.
    pub fn record_all(&mut self, right: &[bool]) -> bool {
        if self.recent.len() == Self::WINDOW {
            if let Some(old) = self.recent.pop_front() {
                for (h, r) in self.hits.iter_mut().zip(old) {
                    *h -= usize::from(r);
                }
            }
        }
        let row: Vec<bool> = (0..self.hits.len())
            .map(|k| right.get(k).copied().unwrap_or(false))
            .collect();
        for (h, r) in self.hits.iter_mut().zip(&row) {
            *h += usize::from(*r);
        }
        self.recent.push_back(row);
        let n = self.recent.len() as f64;
        let acc = |k: usize| self.hits[k] as f64 / n;
        let best = (0..self.hits.len())
            .max_by(|&a, &b| self.hits[a].cmp(&self.hits[b]).then_with(|| b.cmp(&a)))
            .unwrap_or(self.serving);
        let switch = best != self.serving && acc(best) > acc(self.serving) + Self::MARGIN;
        if switch {
            self.serving = best;
        }
        switch
    }
}

/// Runs the replay: for each row in file order, the loop, the frozen first
/// model, the online learners (with their temporal features) and, with
/// `no_change`, the previous row's label predict; the served prediction is
/// the [`ServeChoice`]'s among loop, online learners and no-change, in that
/// order, over the rows all of them predicted (starting with the first
/// online learner, as the daemon does while no batch version exists); then
/// all learn the row.
///
/// # Errors
/// [`PrequentialError::Input`] when the file cannot be read or a column is missing.
pub fn run(opts: &PrequentialOptions) -> Result<PrequentialReport, PrequentialError> {
    let file = opts.file.display().to_string();
    let data = crate::ingest::csv_file::read_labelled_csv(&opts.file, &opts.label, &opts.features)
        .map_err(|reason| PrequentialError::Input {
            reason: without_file(&file, reason),
            file: file.clone(),
        })?;
    opts.temporal
        .validate()
        .map_err(|reason| PrequentialError::Input {
            file: file.clone(),
            reason: format!("temporal features: {reason}"),
        })?;
    let features = data.features.clone();
    let nf = features.len();
    let classes = crate::learn::sort_classes(data.labels.iter().cloned());
    let index: std::collections::HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut temporal = Temporal::new(opts.temporal.clone(), nf, classes.len());
    let online_width = temporal.width();
    // The tree families' columns: the readings and the last label.
    let tree_columns: Vec<usize> = (0..nf)
        .chain(if opts.temporal.last_label {
            online_width - classes.len()..online_width
        } else {
            0..0
        })
        .collect();
    let mut online: Vec<_> = opts
        .online
        .iter()
        .map(|f| {
            let full = *f == OnlineFamily::Logistic;
            let width = if full {
                online_width
            } else {
                tree_columns.len()
            };
            (full, f.new_model(width, Some(classes.len()), opts.seed))
        })
        .collect();
    let mut x_tree = Vec::with_capacity(tree_columns.len());
    // Learners of the choice: the loop, the online ones, no-change.
    let k_online = online.len();
    let k_all = 1 + k_online + usize::from(opts.no_change);
    let mut names = vec!["loop".to_string()];
    names.extend(opts.online.iter().map(|f| f.name().to_string()));
    if opts.no_change {
        names.push("no_change".into());
    }
    let mut choice = ServeChoice::among(k_all, usize::from(k_online > 0));
    let mut switches = Vec::new();
    let mut raw = vec![0.0f64; nf];
    let mut x64 = Vec::with_capacity(online_width);
    let frozen_cfg = ContinualConfig {
        retrain_every: 0,
        retrain_on_drift: false,
        ..opts.loop_config.clone()
    };
    let mut live = ContinualLoop::new(opts.loop_config.clone(), features.clone());
    let mut frozen = ContinualLoop::new(frozen_cfg, features.clone());
    let n = data.len() as u64;
    let seg_len = n.div_ceil(opts.segments.max(1) as u64).max(1);
    let mut segments: Vec<Segment> = (0..n.div_ceil(seg_len))
        .map(|s| Segment {
            start: s * seg_len,
            end: ((s + 1) * seg_len).min(n),
            scored: 0,
            loop_accuracy: None,
            frozen_accuracy: None,
            online_accuracy: Vec::new(),
            served_accuracy: None,
            alarms: 0,
            promotions: 0,
        })
        .collect();
    let mut hits = vec![(0u64, 0u64); segments.len()];
    // Per segment and learner of the choice (then served): scored, right.
    let mut tallies = vec![vec![(0u64, 0u64); k_all + 1]; segments.len()];
    let mut record = Vec::with_capacity(if opts.record { data.len() } else { 0 });
    let (mut model_peak, mut data_peak) = (0u64, 0u64);
    let mut trainings_seen = 0;
    let row_bytes = (nf * 4 + 16) as u64;
    let mut preds: Vec<Option<usize>> = vec![None; k_all];
    let mut previous: Option<usize> = None;
    let started = std::time::Instant::now();
    for (i, label) in data.labels.iter().enumerate() {
        let x = data.row(i);
        let s = i / seg_len as usize;
        let (pl, pf) = (live.observe(x, label), frozen.observe(x, label));
        let y = index[label.as_str()];
        preds[0] = pl.as_deref().and_then(|p| index.get(p).copied());
        if k_online > 0 {
            for (d, v) in raw.iter_mut().zip(x) {
                *d = f64::from(*v);
            }
            temporal.row("", &raw, &mut x64);
            x_tree.clear();
            x_tree.extend(tree_columns.iter().map(|&j| x64[j]));
            for (k, (full, model)) in online.iter_mut().enumerate() {
                let wrong_width = |e: OnlineError| PrequentialError::Input {
                    file: file.clone(),
                    reason: format!("row {i}: {e}"),
                };
                let x = if *full { &x64 } else { &x_tree };
                preds[1 + k] = model.predict_one(x).map_err(wrong_width)?;
                model.learn_one(x, y).map_err(wrong_width)?;
            }
            temporal.push("", &raw);
            temporal.label("", y);
        }
        if opts.no_change {
            preds[k_all - 1] = previous;
        }
        previous = Some(y);
        let served = choice.pick_of(&preds);
        let t = &mut tallies[s];
        for (k, p) in preds.iter().chain([&served]).enumerate() {
            if let Some(p) = p {
                t[k].0 += 1;
                t[k].1 += u64::from(*p == y);
            }
        }
        if opts.record {
            let name = |p: &Option<usize>| p.map(|c| classes[c].clone());
            record.push(RowOutcome {
                label: label.clone(),
                learners: preds.iter().map(name).collect(),
                served: name(&served),
            });
        }
        if preds.iter().all(Option::is_some) {
            let right: Vec<bool> = preds.iter().map(|p| *p == Some(y)).collect();
            if choice.record_all(&right) {
                switches.push(Switch {
                    row: i as u64,
                    serves: names[choice.serving()].clone(),
                });
            }
        }
        if let (Some(pl), Some(pf)) = (pl, pf) {
            segments[s].scored += 1;
            hits[s].0 += u64::from(pl == *label);
            hits[s].1 += u64::from(pf == *label);
        }
        if live.decisions.len() != trainings_seen {
            // A training ran: measure the champion once per change.
            trainings_seen = live.decisions.len();
            if let Some(m) = live.champion() {
                model_peak = model_peak.max(m.to_onnx(0).len() as u64);
            }
        }
        data_peak = data_peak.max(
            ((i + 1).min(
                opts.loop_config
                    .window
                    .saturating_add(opts.loop_config.reservoir),
            )) as u64
                * row_bytes,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    for a in &live.alarms {
        segments[(*a / seg_len) as usize].alarms += 1;
    }
    for d in live.decisions.iter().filter(|d| d.promoted) {
        segments[(d.index / seg_len) as usize].promotions += 1;
    }
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    for (s, (hl, hf)) in segments.iter_mut().zip(&hits) {
        s.loop_accuracy = ratio(*hl, s.scored);
        s.frozen_accuracy = ratio(*hf, s.scored);
    }
    let mut total = vec![(0u64, 0u64); k_all + 1];
    for (s, t) in segments.iter_mut().zip(&tallies) {
        s.online_accuracy = t[1..=k_online].iter().map(|h| ratio(h.1, h.0)).collect();
        s.served_accuracy = ratio(t[k_all].1, t[k_all].0);
        for (a, b) in total.iter_mut().zip(t) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
    let scored: u64 = segments.iter().map(|s| s.scored).sum();
    let (hl, hf) = hits.iter().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let same = data.labels.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    Ok(PrequentialReport {
        file,
        rows: n,
        features,
        scored,
        loop_accuracy: ratio(hl, scored),
        frozen_accuracy: ratio(hf, scored),
        online: names[1..=k_online].to_vec(),
        online_accuracy: total[1..=k_online]
            .iter()
            .map(|h| ratio(h.1, h.0))
            .collect(),
        no_change: opts.no_change,
        served_accuracy: ratio(total[k_all].1, total[k_all].0),
        served_scored: total[k_all].0,
        previous_label_accuracy: ratio(same, n.saturating_sub(1)),
        temporal: opts.temporal.clone(),
        online_features: if k_online > 0 { online_width } else { 0 },
        learners: names,
        switches,
        segments,
        alarms: live.alarms.clone(),
        decisions: live.decisions.clone(),
        model_bytes_peak: model_peak,
        loop_data_bytes_peak: data_peak,
        rows_per_second: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        seconds,
        peak_rss_bytes: peak_rss_bytes(),
        loop_config: opts.loop_config.clone(),
        record,
    })
}

/// The report as a table for people.
pub fn render(r: &PrequentialReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let mut head = String::new();
    for name in &r.online {
        head.push_str(&format!("{:<9} ", name.chars().take(9).collect::<String>()));
    }
    let mut out = format!(
        "prequential replay of {} ({} rows, {} features): test then train, row order\n\n\
         rows            scored  loop      frozen    {head}served    alarms  promotions\n",
        r.file,
        r.rows,
        r.features.len(),
    );
    for s in &r.segments {
        let mut extra = String::new();
        for a in &s.online_accuracy {
            extra.push_str(&format!("{:<9} ", f(*a)));
        }
        out.push_str(&format!(
            "{:<15} {:<7} {:<9} {:<9} {extra}{:<9} {:<7} {}\n",
            format!("{}-{}", s.start, s.end),
            s.scored,
            f(s.loop_accuracy),
            f(s.frozen_accuracy),
            f(s.served_accuracy),
            s.alarms,
            s.promotions
        ));
    }
    out.push_str(&format!(
        "\nserved accuracy {} over {} rows: the most accurate of {} over the last {} rows \
         all predicted (a {}-point lead to change); changes: {}\n",
        f(r.served_accuracy),
        r.served_scored,
        r.learners.join(", "),
        ServeChoice::WINDOW,
        ServeChoice::MARGIN * 100.0,
        r.switches.len()
    ));
    out.push_str(&format!(
        "loop {}, frozen first model {} over {} scored rows",
        f(r.loop_accuracy),
        f(r.frozen_accuracy),
        r.scored
    ));
    for (name, a) in r.online.iter().zip(&r.online_accuracy) {
        out.push_str(&format!("; online {name} {}", f(*a)));
    }
    out.push_str(&format!(
        "\nbaseline, the previous row's label (no_change): {}\n",
        f(r.previous_label_accuracy)
    ));
    if !r.online.is_empty() && r.temporal.is_enabled() {
        out.push_str(&format!(
            "online temporal features: lags {}, deltas {}, rolling {}, last label {} ({} model features)\n",
            r.temporal.lags, r.temporal.deltas, r.temporal.rolling, r.temporal.last_label, r.online_features
        ));
    }
    out.push_str(&format!("drift alarms at rows: {:?}\n", r.alarms));
    for d in &r.decisions {
        out.push_str(&format!(
            "row {:<7} {:?}: {} ({})\n",
            d.index,
            d.trigger,
            if d.promoted { "promoted" } else { "refused" },
            d.reason
        ));
    }
    out.push_str(&format!(
        "peak model size {} bytes; peak loop data {} bytes\n{:.0} rows/s ({:.3} s)",
        r.model_bytes_peak, r.loop_data_bytes_peak, r.rows_per_second, r.seconds
    ));
    if let Some(b) = r.peak_rss_bytes {
        out.push_str(&format!(
            "; peak resident memory {:.1} MiB (the process, the file as read included)",
            b as f64 / (1024.0 * 1024.0)
        ));
    }
    out.push('\n');
    out
}

/// What to replay through an online learner (`--family online_logistic` or
/// `hoeffding_tree`).
#[derive(Debug, Clone)]
pub struct OnlineOptions {
    pub file: PathBuf,
    /// Label column.
    pub label: String,
    /// Feature columns; empty: every other column whose first value is numeric.
    pub features: Vec<String>,
    pub family: OnlineFamily,
    /// Segments of the report.
    pub segments: usize,
    /// Seed of a randomised family (`arf`).
    pub seed: u64,
    /// Temporal features the learner sees beside each reading (the file is
    /// one device's stream, in row order).
    pub temporal: TemporalConfig,
}

/// Accuracy of the online learner over one stretch of the stream.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineSegment {
    /// Row range [start, end).
    pub start: u64,
    pub end: u64,
    /// Rows the learner predicted (every row after the first).
    pub scored: u64,
    pub accuracy: Option<f64>,
}

/// The report of an online replay (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineReport {
    pub file: String,
    pub family: String,
    pub rows: u64,
    pub features: Vec<String>,
    /// Class names; a label is learned as its class first appears.
    pub classes: Vec<String>,
    /// Rows predicted: all but those before the first learned sample.
    pub scored: u64,
    /// Prequential (test-then-train) accuracy over the scored rows.
    pub accuracy: Option<f64>,
    /// The baseline that predicts each row's label as the previous row's
    /// (over rows 1..).
    pub previous_label_accuracy: Option<f64>,
    /// The temporal features, and the width of the rows the learner saw.
    pub temporal: TemporalConfig,
    pub model_features: usize,
    pub segments: Vec<OnlineSegment>,
    /// Predictions and updates per second of wall time (reading the file
    /// excluded).
    pub rows_per_second: f64,
    /// Wall time of the predictions and updates, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process at the end (`VmHWM`, Linux; the
    /// file as read included), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// `VmHWM` of this process, bytes (`None` off Linux).
pub(super) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Replays the file through a new online learner of `opts.family`: for each
/// row in file order, predict, then learn (River's
/// `evaluate.progressive_val_score`). Features are the CSV's `f32` values
/// (as samples are stored), widened to `f64`; classes are the labels
/// sorted ([`crate::learn::sort_classes`]), and a two-class file gets the
/// logistic family's binary model. With temporal features
/// ([`TemporalConfig`]), each row's features come from
/// [`Temporal::row`] over the file's earlier rows and labels (the label of
/// a row is known once it has been predicted).
///
/// # Errors
/// [`PrequentialError::Input`] when the file cannot be read or a column is
/// missing.
pub fn run_online(opts: &OnlineOptions) -> Result<OnlineReport, PrequentialError> {
    let file = opts.file.display().to_string();
    let data = crate::ingest::csv_file::read_labelled_csv(&opts.file, &opts.label, &opts.features)
        .map_err(|reason| PrequentialError::Input {
            reason: without_file(&file, reason),
            file: file.clone(),
        })?;
    let classes = crate::learn::sort_classes(data.labels.iter().cloned());
    let index: std::collections::HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let ys: Vec<usize> = data.labels.iter().map(|l| index[l.as_str()]).collect();
    let nf = data.features.len();
    opts.temporal
        .validate()
        .map_err(|reason| PrequentialError::Input {
            file: file.clone(),
            reason: format!("temporal features: {reason}"),
        })?;
    let mut temporal = Temporal::new(opts.temporal.clone(), nf, classes.len());
    let width = temporal.width();
    let mut model = opts.family.new_model(width, Some(classes.len()), opts.seed);
    let n = data.len() as u64;
    let seg_len = n.div_ceil(opts.segments.max(1) as u64).max(1);
    let mut segments: Vec<OnlineSegment> = (0..n.div_ceil(seg_len))
        .map(|s| OnlineSegment {
            start: s * seg_len,
            end: ((s + 1) * seg_len).min(n),
            scored: 0,
            accuracy: None,
        })
        .collect();
    let mut hits = vec![0u64; segments.len()];
    let mut raw = vec![0.0f64; nf];
    let mut x = Vec::with_capacity(width);
    let started = std::time::Instant::now();
    for (i, &y) in ys.iter().enumerate() {
        for (xi, v) in raw.iter_mut().zip(data.row(i)) {
            *xi = f64::from(*v);
        }
        temporal.row("", &raw, &mut x);
        let wrong_width = |e: OnlineError| PrequentialError::Input {
            file: file.clone(),
            reason: format!("row {i}: {e}"),
        };
        if let Some(p) = model.predict_one(&x).map_err(wrong_width)? {
            let s = i / seg_len as usize;
            segments[s].scored += 1;
            hits[s] += u64::from(p == y);
        }
        model.learn_one(&x, y).map_err(wrong_width)?;
        temporal.push("", &raw);
        temporal.label("", y);
    }
    let seconds = started.elapsed().as_secs_f64();
    for (s, h) in segments.iter_mut().zip(&hits) {
        s.accuracy = (s.scored > 0).then(|| *h as f64 / s.scored as f64);
    }
    let scored: u64 = segments.iter().map(|s| s.scored).sum();
    let hit: u64 = hits.iter().sum();
    let previous = ys.windows(2).filter(|w| w[0] == w[1]).count();
    Ok(OnlineReport {
        file,
        family: opts.family.name().to_string(),
        rows: n,
        features: data.features.clone(),
        classes,
        scored,
        accuracy: (scored > 0).then(|| hit as f64 / scored as f64),
        previous_label_accuracy: (ys.len() > 1).then(|| previous as f64 / (ys.len() - 1) as f64),
        temporal: opts.temporal.clone(),
        model_features: width,
        segments,
        rows_per_second: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        seconds,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// The online report as a table for people.
pub fn render_online(r: &OnlineReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let mut out = format!(
        "prequential replay of {} ({} rows, {} features, {} classes) through {}: \
         predict then learn, each row in order\n\n\
         rows            scored  accuracy\n",
        r.file,
        r.rows,
        r.features.len(),
        r.classes.len(),
        r.family
    );
    for s in &r.segments {
        out.push_str(&format!(
            "{:<15} {:<7} {}\n",
            format!("{}-{}", s.start, s.end),
            s.scored,
            f(s.accuracy)
        ));
    }
    out.push_str(&format!(
        "\noverall: prequential accuracy {} over {} scored rows; {:.0} rows/s ({:.3} s)\n\
         baseline, the previous row's label: {}\n",
        f(r.accuracy),
        r.scored,
        r.rows_per_second,
        r.seconds,
        f(r.previous_label_accuracy)
    ));
    if let Some(b) = r.peak_rss_bytes {
        out.push_str(&format!(
            "peak resident memory {:.1} MiB (the process, the file as read included)\n",
            b as f64 / (1024.0 * 1024.0)
        ));
    }
    if r.temporal.is_enabled() {
        out.push_str(&format!(
            "temporal features: lags {}, deltas {}, rolling {}, last label {} ({} model features)\n",
            r.temporal.lags, r.temporal.deltas, r.temporal.rolling, r.temporal.last_label, r.model_features
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ServeChoice;

    #[test]
    fn the_server_changes_only_past_the_margin() {
        let mut c = ServeChoice::new();
        assert!(!c.second_serves());
        assert_eq!(c.pick(Some(1), Some(2)), Some(1));
        assert_eq!(c.pick(None, Some(2)), Some(2), "the other stands in");
        // Equal records: no change.
        for _ in 0..ServeChoice::WINDOW {
            assert!(!c.record(true, true));
        }
        // The second leads by 1/200 per row where only it is right: the
        // change comes when the lead passes 2 points, at the 5th such row.
        let changed: Vec<bool> = (0..5).map(|_| c.record(false, true)).collect();
        assert_eq!(changed, vec![false, false, false, false, true]);
        assert!(c.second_serves());
        assert_eq!(c.pick(Some(1), Some(2)), Some(2));
        // Back only when the first leads by more than the margin in turn.
        let back = (0..20).position(|_| c.record(true, false));
        assert_eq!(back, Some(9), "5 rows to even out, then 5 to lead by 0.025");
    }
}
