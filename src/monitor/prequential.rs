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
    /// An online learner beside the loop ([`ServeChoice`]): both predict
    /// every row, and the one more accurate over the recent rows serves.
    pub online: Option<OnlineFamily>,
}

/// Errors of the replay.
#[derive(Debug, thiserror::Error)]
pub enum PrequentialError {
    #[error("{file}: {reason}")]
    Input { file: String, reason: String },
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
    /// With an online learner: its accuracy over the rows it predicted, and
    /// that of the served predictions (loop or online, [`ServeChoice`]) over
    /// the rows either predicted.
    pub online_accuracy: Option<f64>,
    pub served_accuracy: Option<f64>,
    pub alarms: u64,
    pub promotions: u64,
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
    /// The online learner beside the loop, if any, its accuracy, that of the
    /// served predictions, and the rows where the server changed.
    pub online: Option<String>,
    pub online_accuracy: Option<f64>,
    pub served_accuracy: Option<f64>,
    pub switches: Vec<u64>,
    pub segments: Vec<Segment>,
    /// Row indices of the drift alarms of the loop.
    pub alarms: Vec<u64>,
    /// Promotions (and refusals) of the loop, with their reasons.
    pub decisions: Vec<Decision>,
    /// Largest champion of the loop, as its ONNX bytes (the size it serves at).
    pub model_bytes_peak: u64,
    /// Largest training memory held by the loop (window + reservoir rows), bytes.
    pub loop_data_bytes_peak: u64,
    pub loop_config: ContinualConfig,
}

/// Which of two learners serves: the one whose predictions were right more
/// often over the last [`ServeChoice::WINDOW`] rows both predicted, with
/// hysteresis (the other must lead by more than [`ServeChoice::MARGIN`]).
/// Starts with the first; a learner without a prediction for a row is
/// stood in for by the other.
#[derive(Debug, Clone)]
pub struct ServeChoice {
    /// Recent outcomes of both, `(first right, second right)`, oldest first.
    recent: std::collections::VecDeque<(bool, bool)>,
    hits: (usize, usize),
    /// Which serves: false = the first.
    second: bool,
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

    pub fn new() -> Self {
        Self {
            recent: std::collections::VecDeque::with_capacity(Self::WINDOW),
            hits: (0, 0),
            second: false,
        }
    }

    /// A choice that starts with the second learner serving when `second`.
    pub fn starting_with(second: bool) -> Self {
        Self {
            second,
            ..Self::new()
        }
    }

    /// Rows in the recent record (at most [`ServeChoice::WINDOW`]).
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Whether the second learner serves now.
    pub fn second_serves(&self) -> bool {
        self.second
    }

    /// The served one of two predictions.
    pub fn pick<T>(&self, first: Option<T>, second: Option<T>) -> Option<T> {
        if self.second {
            second.or(first)
        } else {
            first.or(second)
        }
    }

    /// Records whether each was right on a row both predicted; true when the
    /// server changed.
    pub fn record(&mut self, first_right: bool, second_right: bool) -> bool {
        if self.recent.len() == Self::WINDOW {
            if let Some((a, b)) = self.recent.pop_front() {
                self.hits.0 -= usize::from(a);
                self.hits.1 -= usize::from(b);
            }
        }
        self.recent.push_back((first_right, second_right));
        self.hits.0 += usize::from(first_right);
        self.hits.1 += usize::from(second_right);
        let n = self.recent.len() as f64;
        let (a, b) = (self.hits.0 as f64 / n, self.hits.1 as f64 / n);
        let switch = if self.second {
            a > b + Self::MARGIN
        } else {
            b > a + Self::MARGIN
        };
        self.second ^= switch;
        switch
    }
}

/// Runs the replay.
///
/// # Errors
/// [`PrequentialError::Input`] when the file cannot be read or a column is missing.
pub fn run(opts: &PrequentialOptions) -> Result<PrequentialReport, PrequentialError> {
    let file = opts.file.display().to_string();
    let data = crate::ingest::csv_file::read_labelled_csv(&opts.file, &opts.label, &opts.features)
        .map_err(|reason| PrequentialError::Input {
            file: file.clone(),
            reason,
        })?;
    let features = data.features.clone();
    let classes = crate::learn::sort_classes(data.labels.iter().cloned());
    let mut online = opts
        .online
        .map(|f| f.new_model(features.len(), Some(classes.len()), 42));
    let mut choice = ServeChoice::new();
    let mut switches = Vec::new();
    let mut online_hits = vec![(0u64, 0u64, 0u64, 0u64); 0];
    let mut x64 = vec![0.0f64; features.len()];
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
            online_accuracy: None,
            served_accuracy: None,
            alarms: 0,
            promotions: 0,
        })
        .collect();
    let mut hits = vec![(0u64, 0u64); segments.len()];
    // Per segment: online scored, online right, served scored, served right.
    online_hits.resize(segments.len(), (0, 0, 0, 0));
    let (mut model_peak, mut data_peak) = (0u64, 0u64);
    let mut trainings_seen = 0;
    let row_bytes = (features.len() * 4 + 16) as u64;
    for (i, label) in data.labels.iter().enumerate() {
        let x = data.row(i);
        let (pl, pf) = (live.observe(x, label), frozen.observe(x, label));
        if let Some(model) = online.as_mut() {
            for (d, v) in x64.iter_mut().zip(x) {
                *d = f64::from(*v);
            }
            let wrong_width = |e: OnlineError| PrequentialError::Input {
                file: opts.file.display().to_string(),
                reason: format!("row {i}: {e}"),
            };
            let po = model
                .predict_one(&x64)
                .map_err(wrong_width)?
                .map(|c| classes[c].clone());
            let s = i / seg_len as usize;
            let h = &mut online_hits[s];
            if let Some(p) = &po {
                h.0 += 1;
                h.1 += u64::from(p == label);
            }
            if let Some(p) = choice.pick(pl.as_ref(), po.as_ref()) {
                h.2 += 1;
                h.3 += u64::from(p == label);
            }
            if let (Some(a), Some(b)) = (&pl, &po) {
                if choice.record(a == label, b == label) {
                    switches.push(i as u64);
                }
            }
            let y = classes.iter().position(|c| c == label).unwrap_or(0);
            model.learn_one(&x64, y).map_err(wrong_width)?;
        }
        if let (Some(pl), Some(pf)) = (pl, pf) {
            let s = i / seg_len as usize;
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
            ((i + 1).min(opts.loop_config.window + opts.loop_config.reservoir)) as u64 * row_bytes,
        );
    }
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
    for (s, h) in segments.iter_mut().zip(&online_hits) {
        s.online_accuracy = ratio(h.1, h.0);
        s.served_accuracy = ratio(h.3, h.2);
    }
    let total = online_hits.iter().fold((0, 0, 0, 0), |t, h| {
        (t.0 + h.0, t.1 + h.1, t.2 + h.2, t.3 + h.3)
    });
    let scored: u64 = segments.iter().map(|s| s.scored).sum();
    let (hl, hf) = hits.iter().fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    Ok(PrequentialReport {
        file,
        rows: n,
        features,
        scored,
        loop_accuracy: ratio(hl, scored),
        frozen_accuracy: ratio(hf, scored),
        online: opts.online.map(|f| f.name().to_string()),
        online_accuracy: ratio(total.1, total.0),
        served_accuracy: ratio(total.3, total.2),
        switches,
        segments,
        alarms: live.alarms.clone(),
        decisions: live.decisions.clone(),
        model_bytes_peak: model_peak,
        loop_data_bytes_peak: data_peak,
        loop_config: opts.loop_config.clone(),
    })
}

/// The report as a table for people.
pub fn render(r: &PrequentialReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let online = r.online.is_some();
    let mut out = format!(
        "prequential replay of {} ({} rows, {} features): test then train, row order\n\n\
         rows            scored  loop      frozen    {}alarms  promotions\n",
        r.file,
        r.rows,
        r.features.len(),
        if online { "online    served    " } else { "" }
    );
    for s in &r.segments {
        let extra = if online {
            format!("{:<9} {:<9} ", f(s.online_accuracy), f(s.served_accuracy))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<15} {:<7} {:<9} {:<9} {extra}{:<7} {}\n",
            format!("{}-{}", s.start, s.end),
            s.scored,
            f(s.loop_accuracy),
            f(s.frozen_accuracy),
            s.alarms,
            s.promotions
        ));
    }
    out.push_str(&format!(
        "\noverall: loop {}, frozen first model {} over {} scored rows\n",
        f(r.loop_accuracy),
        f(r.frozen_accuracy),
        r.scored
    ));
    if let Some(name) = &r.online {
        out.push_str(&format!(
            "online learner {name} {}; served (the more accurate of loop and online over \
             the last {} rows) {}; server changes at rows {:?}\n",
            f(r.online_accuracy),
            ServeChoice::WINDOW,
            f(r.served_accuracy),
            r.switches
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
        "peak model size {} bytes; peak loop data {} bytes\n",
        r.model_bytes_peak, r.loop_data_bytes_peak
    ));
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
fn peak_rss_bytes() -> Option<u64> {
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
            file: file.clone(),
            reason,
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
