//! Data augmentation of training rows: jitter, magnitude scaling, time shift,
//! window slicing and mixup.
//!
//! The sensor transforms follow Um et al. 2017, "Data augmentation of wearable
//! sensor data for Parkinson's disease monitoring using convolutional neural
//! networks" (ICMI '17, §3.2: jittering, scaling, window slicing; the time
//! shift is their permutation/cropping family applied to row order), and
//! mixup follows Zhang et al. 2018, "mixup: Beyond Empirical Risk
//! Minimization" (ICLR 2018, λ ~ Beta(α, α)).
//!
//! Augmentation is applied to a training part only, after every split (the
//! temporal holdout, the older-regime slice, k-fold validation folds and the
//! MLP's early-stopping split): see [`crate::learn::prepare`]. The rows it
//! adds are appended after the original rows, which it never changes.
//!
//! Each of the `copies` augmented copies of original row `i` is made in this
//! order, every enabled step drawing from one seeded RNG (the same data,
//! config and seed give bitwise-equal rows):
//!
//! 1. **time shift** (`time_shift = k`):
//!    - plain rows (no `windows`): the rows are samples of a slowly varying
//!      signal in time order, so the row is moved a random fraction of the
//!      way towards a neighbour `j` within `±k` positions that has the same
//!      label: `x = xᵢ + u·(xⱼ − xᵢ)`, `u ~ U(0, 1)` (linear interpolation
//!      between two readings, i.e. a reading at a shifted time). Without such
//!      a neighbour the row is kept. The label is row `i`'s.
//!    - windowed rows (`windows` declared): every window is shifted by the
//!      same `s ~ U{−k, …, k}` positions, the edge value repeated;
//! 2. **window slicing** (`window_slice = r`, windows only; otherwise a
//!    no-op): one contiguous slice of `⌈(1 − r)·L⌉` values of each window
//!    (the same offset for every window) is stretched back to `L` values by
//!    linear interpolation (Um et al.; Le Guennec et al. 2016);
//! 3. **mixup** (`mixup = α`): `x = λ·x + (1 − λ)·xⱼ` with a uniformly
//!    drawn original row `j` and `λ ~ Beta(α, α)`. The trainers take hard
//!    labels, so a classification row takes the label of the larger weight
//!    (`yᵢ` when `λ ≥ 0.5`, else `yⱼ`); a regression target is mixed by the
//!    same `λ` (Zhang et al.'s definition);
//! 4. **scaling** (`scaling = σ`): every feature of the row is multiplied by
//!    one factor `a ~ N(1, σ²)` (raw values, as Um et al. scale the raw
//!    signal: meaningful for magnitudes such as acceleration, less so for a
//!    feature with an arbitrary offset such as °C);
//! 5. **jitter** (`jitter = σ`): `x_f += ε`, `ε ~ N(0, (σ·sd_f)²)`, with
//!    `sd_f` the population standard deviation of feature `f` over the
//!    original training rows (missing values ignored; a constant feature
//!    gets no noise).
//!
//! A missing value (`NaN`) stays missing. An augmented row carries the
//! timestamp of its row `i` (interpolated with the time shift of plain rows),
//! so it lies inside the training part's time range.

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use crate::ingest::decode::Task;

/// The most augmented copies per training row (training time and memory
/// grow linearly with it on a small board).
pub const MAX_COPIES: usize = 20;

/// `[pipelines.model.augment]`: augmentation of the training rows. Everything
/// off by default (`copies = 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augmented copies of each training row (0: off), at most [`MAX_COPIES`].
    pub copies: usize,
    /// Jitter: standard deviation of the added Gaussian noise as a fraction
    /// of each feature's standard deviation (0: off).
    pub jitter: f64,
    /// Magnitude scaling: standard deviation of the per-sample factor
    /// `~ N(1, σ²)` (0: off).
    pub scaling: f64,
    /// Time shift: most positions a sample moves (0: off).
    pub time_shift: usize,
    /// Window slicing: fraction of each window cut away before it is
    /// stretched back, in `[0, 1)` (0: off; needs `windows`).
    pub window_slice: f64,
    /// Mixup: `α` of `λ ~ Beta(α, α)` (0: off).
    pub mixup: f64,
    /// Windowed features: each group lists one channel's features in time
    /// order (e.g. `["ax_0", "ax_1", …]`). Empty: plain rows.
    pub windows: Vec<Vec<String>>,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            copies: 0,
            jitter: 0.0,
            scaling: 0.0,
            time_shift: 0,
            window_slice: 0.0,
            mixup: 0.0,
            windows: vec![],
            seed: 0,
        }
    }
}

impl AugmentConfig {
    /// Whether any row would be added.
    pub fn enabled(&self) -> bool {
        self.copies > 0 && !self.transforms().is_empty()
    }

    /// The enabled transforms with their strengths, e.g. `jitter=0.05`, in
    /// the order they are applied.
    pub fn transforms(&self) -> Vec<String> {
        let windows = !self.windows.is_empty();
        let mut out = vec![];
        if self.time_shift > 0 {
            let on = if windows { "windows" } else { "rows" };
            out.push(format!("time_shift={} ({on})", self.time_shift));
        }
        if self.window_slice > 0.0 && windows {
            out.push(format!("window_slice={}", self.window_slice));
        }
        if self.mixup > 0.0 {
            out.push(format!("mixup={}", self.mixup));
        }
        if self.scaling > 0.0 {
            out.push(format!("scaling={}", self.scaling));
        }
        if self.jitter > 0.0 {
            out.push(format!("jitter={}", self.jitter));
        }
        out
    }

    /// Checks the values; the error starts with the key (`jitter: …`).
    ///
    /// # Errors
    /// A message naming the first bad key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("jitter", self.jitter),
            ("scaling", self.scaling),
            ("mixup", self.mixup),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key}: {v} must be a finite number ≥ 0 (0: off)"));
            }
        }
        if !(self.window_slice >= 0.0 && self.window_slice < 1.0) {
            return Err(format!(
                "window_slice: {} must be in [0, 1) (0: off)",
                self.window_slice
            ));
        }
        if self.copies > MAX_COPIES {
            return Err(format!(
                "copies: {} is more than the limit of {MAX_COPIES}",
                self.copies
            ));
        }
        let any = !self.transforms().is_empty();
        if self.copies > 0 && !any {
            return Err(format!(
                "copies: {} copies but no transform is enabled (jitter, scaling, \
                 time_shift, mixup, or window_slice with windows)",
                self.copies
            ));
        }
        if self.copies == 0 && any {
            return Err("copies: a transform is enabled but copies = 0 adds no rows".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (g, group) in self.windows.iter().enumerate() {
            if group.len() < 2 {
                return Err(format!("windows[{g}]: a window needs at least 2 features"));
            }
            for f in group {
                if !seen.insert(f) {
                    return Err(format!("windows[{g}]: `{f}` is in more than one place"));
                }
            }
        }
        Ok(())
    }

    /// The windows as feature indices into `features`.
    ///
    /// # Errors
    /// A message `windows[g]: …` naming a feature that is not in `features`.
    pub fn window_indices(&self, features: &[String]) -> Result<Vec<Vec<usize>>, String> {
        self.windows
            .iter()
            .enumerate()
            .map(|(g, group)| {
                group
                    .iter()
                    .map(|f| {
                        features.iter().position(|n| n == f).ok_or_else(|| {
                            format!("windows[{g}]: `{f}` is not one of the pipeline's features")
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// Appends `cfg.copies` augmented copies of every row of `data` (see the
/// module documentation); the original rows come first, unchanged.
/// `windows` are feature indices per channel ([`AugmentConfig::window_indices`]);
/// `salt` is mixed into the seed so that different training parts of one
/// training (folds, refit) draw differently. Returns `data` unchanged when
/// augmentation is off or `data` is empty.
pub fn augment(data: &Dataset, cfg: &AugmentConfig, windows: &[Vec<usize>], salt: u64) -> Dataset {
    let mut out = data.clone();
    if !cfg.enabled() || data.is_empty() {
        return out;
    }
    let n = data.len();
    let nf = data.n_features;
    let classify = data.task == Task::Classification;
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let sd = feature_sd(&data.x, nf);
    let row = |i: usize| &data.x[i * nf..(i + 1) * nf];
    let same_label = |i: usize, j: usize| match data.task {
        Task::Classification => data.y[i] == data.y[j],
        Task::Regression => true,
    };
    out.x.reserve(cfg.copies * n * nf);
    let mut x = vec![0f32; nf];
    for _ in 0..cfg.copies {
        for i in 0..n {
            x.copy_from_slice(row(i));
            let mut ts = data.timestamps[i];
            let (mut label, mut value) = (data.y.get(i).copied(), data.values.get(i).copied());
            if cfg.time_shift > 0 {
                let k = cfg.time_shift;
                if windows.is_empty() {
                    let lo = i.saturating_sub(k);
                    let hi = (i + k).min(n - 1);
                    let neighbours: Vec<usize> =
                        (lo..=hi).filter(|&j| j != i && same_label(i, j)).collect();
                    if !neighbours.is_empty() {
                        let j = neighbours[rng.usize(..neighbours.len())];
                        let u = rng.f64();
                        for (v, &o) in x.iter_mut().zip(row(j)) {
                            *v += (u * f64::from(o - *v)) as f32;
                        }
                        let dt = (data.timestamps[j] - ts) as f64;
                        ts += (u * dt).round() as i64;
                        if let (Some(v), Some(&o)) = (value.as_mut(), data.values.get(j)) {
                            *v += u * (o - *v);
                        }
                    }
                } else {
                    let s = rng.i64(-(k as i64)..=k as i64);
                    for w in windows {
                        shift_window(&mut x, w, s);
                    }
                }
            }
            if cfg.window_slice > 0.0 && !windows.is_empty() {
                let start = rng.f64();
                for w in windows {
                    slice_window(&mut x, w, cfg.window_slice, start);
                }
            }
            if cfg.mixup > 0.0 {
                let j = rng.usize(..n);
                let lambda = beta(&mut rng, cfg.mixup);
                for (v, &o) in x.iter_mut().zip(row(j)) {
                    *v = (lambda * f64::from(*v) + (1.0 - lambda) * f64::from(o)) as f32;
                }
                if classify && lambda < 0.5 {
                    label = Some(data.y[j]);
                }
                if let (Some(v), Some(&o)) = (value.as_mut(), data.values.get(j)) {
                    *v = lambda * *v + (1.0 - lambda) * o;
                }
            }
            if cfg.scaling > 0.0 {
                let a = 1.0 + cfg.scaling * normal(&mut rng);
                x.iter_mut().for_each(|v| *v = (f64::from(*v) * a) as f32);
            }
            if cfg.jitter > 0.0 {
                for (v, &s) in x.iter_mut().zip(&sd) {
                    *v = (f64::from(*v) + cfg.jitter * s * normal(&mut rng)) as f32;
                }
            }
            out.x.extend_from_slice(&x);
            out.y.extend(label);
            out.values.extend(value);
            out.timestamps.push(ts);
        }
    }
    out
}

/// Population standard deviation of each feature of `x` (`[n, nf]`),
/// missing values ignored; 0 for a feature never present.
pub fn feature_sd(x: &[f32], nf: usize) -> Vec<f64> {
    let mut sum = vec![0f64; nf];
    let mut count = vec![0u64; nf];
    for row in x.chunks_exact(nf) {
        for (j, &v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            sum[j] += f64::from(v);
            count[j] += 1;
        }
    }
    let mean: Vec<f64> = sum
        .iter()
        .zip(&count)
        .map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
        .collect();
    let mut sq = vec![0f64; nf];
    for row in x.chunks_exact(nf) {
        for (j, &v) in row.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            sq[j] += (f64::from(v) - mean[j]).powi(2);
        }
    }
    sq.iter()
        .zip(&count)
        .map(|(s, &c)| if c > 0 { (s / c as f64).sqrt() } else { 0.0 })
        .collect()
}

/// Shifts the values at `idx` by `s` positions (positive: later values move
/// right), repeating the edge value.
fn shift_window(x: &mut [f32], idx: &[usize], s: i64) {
    let old: Vec<f32> = idx.iter().map(|&f| x[f]).collect();
    let last = old.len() as i64 - 1;
    for (p, &f) in idx.iter().enumerate() {
        x[f] = old[(p as i64 - s).clamp(0, last) as usize];
    }
}

/// Keeps a slice of `⌈(1 − cut)·L⌉` values of the window at `idx`, starting
/// at fraction `start` of the free room, and stretches it back to `L`
/// values by linear interpolation.
fn slice_window(x: &mut [f32], idx: &[usize], cut: f64, start: f64) {
    let l = idx.len();
    let keep = (((1.0 - cut) * l as f64).ceil() as usize).clamp(2, l);
    let offset = ((l - keep) as f64 * start).floor() as usize;
    let old: Vec<f32> = idx.iter().map(|&f| x[f]).collect();
    for (p, &f) in idx.iter().enumerate() {
        let t = offset as f64 + p as f64 * (keep - 1) as f64 / (l - 1) as f64;
        let a = (t.floor() as usize).min(l - 1);
        let b = (a + 1).min(l - 1);
        let u = t - a as f64;
        x[f] = (f64::from(old[a]) * (1.0 - u) + f64::from(old[b]) * u) as f32;
    }
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(`shape`, 1) draw (Marsaglia & Tsang 2000; `shape < 1` by the
/// `U^{1/shape}` boost).
fn gamma(rng: &mut fastrand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.f64();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let z = normal(rng);
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.f64();
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(`alpha`, `alpha`) draw, as `G₁ / (G₁ + G₂)` of two Gamma draws.
pub(crate) fn beta(rng: &mut fastrand::Rng, alpha: f64) -> f64 {
    let (a, b) = (gamma(rng, alpha), gamma(rng, alpha));
    if a + b > 0.0 {
        a / (a + b)
    } else {
        // Both underflowed (tiny α): Beta(α, α) → Bernoulli(½) as α → 0.
        f64::from(u8::from(rng.bool()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Dataset {
        let mut d = Dataset::empty(Task::Classification, vec!["a".into(), "b".into()], 2);
        for i in 0..n {
            d.x.extend([i as f32, 10.0]);
            d.y.push(i % 2);
            d.timestamps.push(i as i64 * 1000);
        }
        d
    }

    #[test]
    fn off_by_default_and_originals_first() {
        let d = rows(10);
        assert_eq!(augment(&d, &AugmentConfig::default(), &[], 0), d);
        let cfg = AugmentConfig {
            copies: 3,
            jitter: 0.1,
            ..Default::default()
        };
        let a = augment(&d, &cfg, &[], 0);
        assert_eq!(a.len(), 40);
        assert_eq!(a.slice(0..10), d);
        // Copy c of row i keeps its label and timestamp.
        assert_eq!(a.y[10..20], d.y[..]);
        assert_eq!(a.timestamps[30..40], d.timestamps[..]);
        // The constant feature gets no noise.
        assert!(a.x.chunks(2).all(|r| r[1] == 10.0));
    }

    #[test]
    fn plain_time_shift_interpolates_towards_a_same_label_neighbour() {
        let d = rows(20);
        let cfg = AugmentConfig {
            copies: 5,
            time_shift: 2,
            ..Default::default()
        };
        let a = augment(&d, &cfg, &[], 1);
        for r in 20..a.len() {
            let i = r % 20;
            let v = f64::from(a.x[r * 2]);
            // Same label within ±2 positions: only i ± 2.
            assert!((v - i as f64).abs() <= 2.0 + 1e-6, "{v} from {i}");
            assert_eq!(a.y[r], d.y[i]);
            assert!((a.timestamps[r] - d.timestamps[i]).abs() <= 2000);
            // The timestamp moved as far as the value.
            assert!(((a.timestamps[r] as f64 / 1000.0) - v).abs() < 1e-3);
        }
    }

    #[test]
    fn windows_shift_and_slice() {
        let mut x = vec![0.0, 1.0, 2.0, 3.0, 4.0, 99.0];
        let w = [0, 1, 2, 3, 4];
        shift_window(&mut x, &w, 2);
        assert_eq!(x, vec![0.0, 0.0, 0.0, 1.0, 2.0, 99.0]);
        shift_window(&mut x, &w, -1);
        assert_eq!(x, vec![0.0, 0.0, 1.0, 2.0, 2.0, 99.0]);
        // Keep 3 of 5 values (cut 0.4) from offset 2: 2, 3, 4 stretched.
        let mut x = vec![0.0, 1.0, 2.0, 3.0, 4.0];
        slice_window(&mut x, &w, 0.4, 1.0);
        assert_eq!(x, vec![2.0, 2.5, 3.0, 3.5, 4.0]);
    }

    #[test]
    fn beta_and_normal_moments() {
        let mut rng = fastrand::Rng::with_seed(3);
        let n = 200_000;
        let z: Vec<f64> = (0..n).map(|_| normal(&mut rng)).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
        // Beta(α, α): mean ½, variance 1 / (4(2α + 1)).
        for alpha in [0.2, 1.0, 4.0] {
            let b: Vec<f64> = (0..n).map(|_| beta(&mut rng, alpha)).collect();
            let mean = b.iter().sum::<f64>() / n as f64;
            let var = b.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "α {alpha}: mean {mean}");
            assert!(
                (var - want).abs() < 0.01 * want.max(0.1),
                "α {alpha}: {var} vs {want}"
            );
        }
    }

    #[test]
    fn validate_names_the_key() {
        let bad = |c: AugmentConfig| c.validate().unwrap_err();
        let on = AugmentConfig {
            copies: 1,
            jitter: 0.1,
            ..Default::default()
        };
        assert!(on.validate().is_ok());
        assert!(AugmentConfig::default().validate().is_ok());
        assert!(bad(AugmentConfig {
            jitter: -0.1,
            ..on.clone()
        })
        .starts_with("jitter:"));
        assert!(bad(AugmentConfig {
            scaling: f64::NAN,
            ..on.clone()
        })
        .starts_with("scaling:"));
        assert!(bad(AugmentConfig {
            mixup: -1.0,
            ..on.clone()
        })
        .starts_with("mixup:"));
        assert!(bad(AugmentConfig {
            window_slice: 1.0,
            ..on.clone()
        })
        .starts_with("window_slice:"));
        assert!(bad(AugmentConfig {
            copies: 21,
            ..on.clone()
        })
        .starts_with("copies:"));
        assert!(bad(AugmentConfig {
            jitter: 0.0,
            ..on.clone()
        })
        .starts_with("copies:"));
        let w = vec![vec!["a".to_string()]];
        assert!(bad(AugmentConfig { windows: w, ..on }).starts_with("windows[0]:"));
    }
}
