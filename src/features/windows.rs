//! Windowed features for time series: per-device sliding windows over each
//! raw feature (channel), summarised by statistics, for tasks where one
//! reading is not enough (an accelerometer at 10 Hz: one reading says little
//! about walking versus running, a second of them does).
//!
//! A windowed pipeline (`[pipelines.windows] enabled = true`) lists its raw
//! channels in `features`, as any pipeline; the decoder and the store keep
//! reading and storing them unchanged. The *model* input is the window
//! statistics, named `{channel}_{stat}` in channel-major order
//! ([`WindowsConfig::feature_names`]: `ax_mean, ax_std, …, ay_mean, …`).
//!
//! For each device, a window is the last `size` readings of that device (in
//! arrival order when streaming, timestamp order when derived from the
//! store); it is *complete* once it holds `size` readings, and a window
//! sample is formed at the reading that completes it and then at every
//! `step`-th reading after (windows end at readings `size − 1`,
//! `size − 1 + step`, `size − 1 + 2·step`, … of the device, 0-based). The
//! window sample carries the device, the timestamp of its last reading and
//! the **label of its last reading** (the state at the end of the window,
//! what a streaming classifier is asked about; a window whose last reading is
//! unlabelled has no label).
//!
//! Statistics of one channel over the window's values `v₀ … v_{L−1}` (oldest
//! first; `i` is the position in the window). A missing value (`NaN`) is
//! skipped: the statistics are over the present values `P` (with their
//! positions kept for the slope), `n = |P|`; with `n = 0` every statistic is
//! `NaN`, and the slope needs `n ≥ 2` present values at distinct positions
//! (else `NaN`). Accumulated in `f64`, returned as `f32`:
//! - `mean` = `Σ v / n`;
//! - `std`: population standard deviation `√(Σ (v − mean)² / n)` (numpy's
//!   `np.std`, `ddof = 0`);
//! - `min`, `max`;
//! - `rms` = `√(Σ v² / n)`;
//! - `slope`: the ordinary least-squares slope of `v` against `i`, per
//!   reading: `Σ (i − ī)(v − v̄) / Σ (i − ī)²` over `P` (numpy's
//!   `np.polyfit(i, v, 1)[0]`).
//!
//! [`Featurizer`] is the streaming form: one ring buffer of `size × channels`
//! values per device, at most `max_devices` devices (the least recently seen
//! one is evicted when a new one arrives, and counted); after warm-up a
//! reading allocates nothing but the emitted row. [`derive()`] runs the same
//! featurizer over stored readings (per device, in timestamp order), so
//! training sees exactly the windows serving would have formed.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::ingest::decode::Sample;

/// The most readings in one window.
pub const MAX_SIZE: usize = 100_000;

/// A summary statistic of one channel over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Mean,
    Std,
    Min,
    Max,
    Rms,
    Slope,
}

impl Stat {
    /// Every statistic, in the default order.
    pub const ALL: [Stat; 6] = [
        Stat::Mean,
        Stat::Std,
        Stat::Min,
        Stat::Max,
        Stat::Rms,
        Stat::Slope,
    ];

    /// The name used in config and in feature names (`ax_std`).
    pub fn name(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::Std => "std",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Rms => "rms",
            Stat::Slope => "slope",
        }
    }
}

/// `[pipelines.windows]`: windowed features. Off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Whether the pipeline's model learns from window statistics instead of
    /// single readings.
    pub enabled: bool,
    /// Readings per window (per device), at least 2.
    pub size: usize,
    /// Readings between two consecutive window samples of one device
    /// (`step = size`: non-overlapping windows), in `1..=size`.
    pub step: usize,
    /// The statistics computed per channel, in this order (no repeats).
    pub stats: Vec<Stat>,
    /// Devices with a window kept in memory at serving time; a new device
    /// beyond it evicts the least recently seen one (counted).
    pub max_devices: usize,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            size: 10,
            step: 10,
            stats: Stat::ALL.to_vec(),
            max_devices: 1000,
        }
    }
}

impl WindowsConfig {
    /// Checks the values; the error starts with the key (`size: …`).
    ///
    /// # Errors
    /// A message naming the first bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.size < 2 || self.size > MAX_SIZE {
            return Err(format!("size: {} must be in 2..={MAX_SIZE}", self.size));
        }
        if self.step == 0 || self.step > self.size {
            return Err(format!(
                "step: {} must be in 1..=size ({})",
                self.step, self.size
            ));
        }
        if self.stats.is_empty() {
            return Err("stats: at least one statistic is required".into());
        }
        for (i, s) in self.stats.iter().enumerate() {
            if self.stats[..i].contains(s) {
                return Err(format!("stats: `{}` is listed twice", s.name()));
            }
        }
        if self.max_devices == 0 {
            return Err("max_devices: must be at least 1".into());
        }
        Ok(())
    }

    /// The model's feature names for raw `channels`: `{channel}_{stat}`,
    /// channel-major (every statistic of the first channel, then the next).
    pub fn feature_names(&self, channels: &[String]) -> Vec<String> {
        channels
            .iter()
            .flat_map(|c| self.stats.iter().map(move |s| format!("{c}_{}", s.name())))
            .collect()
    }
}

/// Appends the statistics `stats` of `values` (one channel's window, oldest
/// first; `NaN` = missing, skipped) to `out`; see the module documentation
/// for the definitions.
pub fn window_stats(values: impl Iterator<Item = f32> + Clone, stats: &[Stat], out: &mut Vec<f32>) {
    let (mut n, mut sum, mut sum_sq, mut sum_i) = (0u64, 0f64, 0f64, 0f64);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, v) in values.clone().enumerate().filter(|(_, v)| !v.is_nan()) {
        let v = f64::from(v);
        n += 1;
        sum += v;
        sum_sq += v * v;
        sum_i += i as f64;
        min = min.min(v);
        max = max.max(v);
    }
    if n == 0 {
        out.extend(stats.iter().map(|_| f32::NAN));
        return;
    }
    let nf = n as f64;
    let (mean, mean_i) = (sum / nf, sum_i / nf);
    // Second pass, centred: numerically stable for readings with a large
    // offset (a temperature in kelvin, a pressure in Pa).
    let (mut ss, mut sxy, mut sxx) = (0f64, 0f64, 0f64);
    for (i, v) in values.enumerate().filter(|(_, v)| !v.is_nan()) {
        let (dv, di) = (f64::from(v) - mean, i as f64 - mean_i);
        ss += dv * dv;
        sxy += di * dv;
        sxx += di * di;
    }
    for s in stats {
        let v = match s {
            Stat::Mean => mean,
            Stat::Std => (ss / nf).sqrt(),
            Stat::Min => min,
            Stat::Max => max,
            Stat::Rms => (sum_sq / nf).sqrt(),
            Stat::Slope if sxx > 0.0 => sxy / sxx,
            Stat::Slope => f64::NAN,
        };
        out.push(v as f32);
    }
}

/// One device's window: a ring buffer of the last `size` readings.
#[derive(Debug)]
struct Ring {
    /// `[size, channels]` row-major; row `(head + k) % size` is the `k`-th
    /// oldest once full.
    values: Vec<f32>,
    /// Readings held, at most `size`.
    len: usize,
    /// The row the next reading overwrites.
    head: usize,
    /// Readings since the last window sample.
    since: usize,
    /// Recency tick of the last reading, for eviction.
    seen: u64,
}

/// A window sample formed by [`Featurizer::push`].
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    /// The window statistics, `[channels × stats.len()]`, named by
    /// [`WindowsConfig::feature_names`].
    pub features: Vec<f32>,
}

/// Streaming per-device windows; see the module documentation.
#[derive(Debug)]
pub struct Featurizer {
    cfg: WindowsConfig,
    channels: usize,
    devices: HashMap<String, Ring>,
    tick: u64,
    evicted: u64,
    column: Vec<f32>,
}

impl Featurizer {
    /// A featurizer over `channels` raw features per reading.
    pub fn new(cfg: &WindowsConfig, channels: usize) -> Self {
        Self {
            cfg: cfg.clone(),
            channels,
            devices: HashMap::new(),
            tick: 0,
            evicted: 0,
            column: Vec::with_capacity(cfg.size),
        }
    }

    /// Devices evicted so far (a new device arrived with `max_devices`
    /// windows held; the least recently seen one lost its readings).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Devices with a window held.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Adds one reading of `device` (`features`: the raw channels, `NaN` =
    /// missing; a reading of another width is ignored) and returns the
    /// window sample when this reading completes a step.
    pub fn push(&mut self, device: &str, features: &[f32]) -> Option<WindowRow> {
        if features.len() != self.channels {
            return None;
        }
        let (size, step, nc) = (self.cfg.size, self.cfg.step, self.channels);
        self.tick += 1;
        if !self.devices.contains_key(device) {
            if self.devices.len() >= self.cfg.max_devices {
                let oldest = self
                    .devices
                    .iter()
                    .min_by_key(|(_, r)| r.seen)
                    .map(|(d, _)| d.clone());
                if let Some(d) = oldest {
                    self.devices.remove(&d);
                    self.evicted += 1;
                }
            }
            let ring = Ring {
                values: vec![f32::NAN; size * nc],
                len: 0,
                head: 0,
                since: 0,
                seen: 0,
            };
            self.devices.insert(device.to_string(), ring);
        }
        let ring = self.devices.get_mut(device)?;
        ring.seen = self.tick;
        ring.values[ring.head * nc..(ring.head + 1) * nc].copy_from_slice(features);
        ring.head = (ring.head + 1) % size;
        ring.len = (ring.len + 1).min(size);
        ring.since += 1;
        // The first complete window has `since = size ≥ step`.
        if ring.len < size || ring.since < step {
            return None;
        }
        ring.since = 0;
        let mut out = Vec::with_capacity(nc * self.cfg.stats.len());
        for c in 0..nc {
            self.column.clear();
            self.column
                .extend((0..size).map(|k| ring.values[((ring.head + k) % size) * nc + c]));
            window_stats(self.column.iter().copied(), &self.cfg.stats, &mut out);
        }
        Some(WindowRow { features: out })
    }
}

/// Window samples of stored readings: per device (in device order), the
/// readings sorted by timestamp (ties kept in input order) go through a
/// fresh [`Featurizer`] without a device limit; each window sample carries
/// the device, its last reading's timestamp and label. Readings whose width
/// is not `channels` are skipped. Deterministic: the same readings give the
/// same windows in the same order.
pub fn derive(samples: &[Sample], cfg: &WindowsConfig, channels: usize) -> Vec<Sample> {
    let mut by_device: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.features.len() == channels) {
        by_device.entry(s.device.as_str()).or_default().push(s);
    }
    let unbounded = WindowsConfig {
        max_devices: usize::MAX,
        ..cfg.clone()
    };
    let mut out = Vec::new();
    for (device, mut readings) in by_device {
        readings.sort_by_key(|s| s.timestamp_ms);
        let mut f = Featurizer::new(&unbounded, channels);
        for s in readings {
            if let Some(row) = f.push(device, &s.features) {
                out.push(Sample {
                    timestamp_ms: s.timestamp_ms,
                    device: device.to_string(),
                    features: row.features,
                    label: s.label.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: usize, step: usize) -> WindowsConfig {
        WindowsConfig {
            enabled: true,
            size,
            step,
            stats: vec![Stat::Mean, Stat::Max],
            max_devices: 2,
        }
    }

    #[test]
    fn windows_end_every_step_after_the_first_complete_one() {
        let mut f = Featurizer::new(&cfg(3, 2), 1);
        let emitted: Vec<Option<Vec<f32>>> = (0..8)
            .map(|i| f.push("a", &[i as f32]).map(|r| r.features))
            .collect();
        assert_eq!(
            emitted,
            vec![
                None,
                None,
                Some(vec![1.0, 2.0]),
                None,
                Some(vec![3.0, 4.0]),
                None,
                Some(vec![5.0, 6.0]),
                None
            ]
        );
    }

    #[test]
    fn devices_are_separate_and_the_least_recent_is_evicted() {
        let mut f = Featurizer::new(&cfg(2, 2), 1);
        assert!(f.push("a", &[1.0]).is_none());
        assert!(f.push("b", &[10.0]).is_none());
        assert_eq!(f.push("a", &[3.0]).unwrap().features, vec![2.0, 3.0]);
        // "c" evicts "b" (seen least recently).
        assert!(f.push("c", &[0.0]).is_none());
        assert_eq!(f.evicted(), 1);
        assert_eq!(f.devices(), 2);
        assert!(f.push("b", &[20.0]).is_none(), "b starts over");
        assert_eq!(f.evicted(), 2);
        assert!(f.push("x", &[1.0, 2.0]).is_none(), "wrong width ignored");
    }

    #[test]
    fn derive_orders_by_device_and_time_and_takes_the_last_label() {
        let s = |d: &str, t: i64, v: f32, l: &str| Sample {
            timestamp_ms: t,
            device: d.into(),
            features: vec![v],
            label: Some(l.into()),
        };
        let readings = vec![
            s("b", 2, 5.0, "y"),
            s("a", 2, 2.0, "q"),
            s("a", 1, 1.0, "p"),
            s("b", 1, 4.0, "x"),
        ];
        let w = derive(&readings, &cfg(2, 2), 1);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].device.as_str(), w[0].timestamp_ms), ("a", 2));
        assert_eq!(w[0].features, vec![1.5, 2.0]);
        assert_eq!(w[0].label.as_deref(), Some("q"));
        assert_eq!(w[1].features, vec![4.5, 5.0]);
        assert_eq!(w[1].label.as_deref(), Some("y"));
    }

    #[test]
    fn validate_names_the_key() {
        let on = cfg(4, 2);
        assert!(on.validate().is_ok());
        assert!(WindowsConfig::default().validate().is_ok());
        let bad = |c: WindowsConfig| c.validate().unwrap_err();
        assert!(bad(WindowsConfig {
            size: 1,
            ..on.clone()
        })
        .starts_with("size:"));
        assert!(bad(WindowsConfig {
            step: 5,
            ..on.clone()
        })
        .starts_with("step:"));
        assert!(bad(WindowsConfig {
            step: 0,
            ..on.clone()
        })
        .starts_with("step:"));
        assert!(bad(WindowsConfig {
            stats: vec![],
            ..on.clone()
        })
        .starts_with("stats:"));
        assert!(bad(WindowsConfig {
            stats: vec![Stat::Rms, Stat::Rms],
            ..on.clone()
        })
        .starts_with("stats:"));
        assert!(bad(WindowsConfig {
            max_devices: 0,
            ..on.clone()
        })
        .starts_with("max_devices:"));
        assert_eq!(
            on.feature_names(&["ax".into(), "ay".into()]),
            vec!["ax_mean", "ax_max", "ay_mean", "ay_max"]
        );
    }
}
