//! `edgeloop evaluate --prequential --family hoeffding_tree|arf` on a
//! regression label: the file's rows replayed through an online regression
//! family ([`crate::learn::online::OnlineRegression`]), each row predicted
//! then learned, in file order (River's `evaluate.progressive_val_score`:
//! every row is scored, the first one with the empty model's 0).
//!
//! Reports the prequential MAE, RMSE and R² (`1 − SSE / Σ (y − ȳ)²` over the
//! scored rows, River's `metrics.R2` at the end of the stream), the MAE per
//! segment, and the MAE over rows 1.. of the baseline that predicts each
//! row's target as the previous row's, with rows/s and peak memory.

use std::path::PathBuf;

use serde::Serialize;

use super::prequential::PrequentialError;
use crate::learn::online::{OnlineError, OnlineFamily, OnlineRegression, OnlineRegressor};

/// What to replay (`evaluate --prequential --family F --task regression`).
#[derive(Debug, Clone)]
pub struct RegressionOptions {
    pub file: PathBuf,
    /// Label column: a number per row (rows whose label is not a finite
    /// number are skipped, neither predicted nor learned).
    pub label: String,
    /// Feature columns; empty: every other column whose first value is numeric.
    pub features: Vec<String>,
    /// `hoeffding_tree` or `arf`.
    pub family: OnlineFamily,
    /// Segments of the report.
    pub segments: usize,
    /// Seed of `arf`.
    pub seed: u64,
}

/// The online regressor's errors over one stretch of the stream.
#[derive(Debug, Clone, Serialize)]
pub struct RegressionSegment {
    /// Row range [start, end) of the rows replayed (labels that are numbers).
    pub start: u64,
    pub end: u64,
    pub mae: Option<f64>,
}

/// The report (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineRegressionReport {
    pub file: String,
    pub family: String,
    /// Rows replayed (labels that are numbers); each one scored.
    pub rows: u64,
    /// Rows skipped: their label is not a finite number.
    pub skipped: u64,
    pub features: Vec<String>,
    /// Prequential mean absolute error, root mean squared error and R².
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    pub r2: Option<f64>,
    /// MAE of the previous row's target as the prediction (rows 1..).
    pub previous_value_mae: Option<f64>,
    pub segments: Vec<RegressionSegment>,
    /// Predictions and updates per second of wall time (reading the file
    /// excluded).
    pub rows_per_second: f64,
    /// Wall time of the predictions and updates, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process at the end (`VmHWM`, Linux; the
    /// file as read included), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// Replays the file through a new online regressor of `opts.family`: for
/// each row in file order, predict, then learn. Features are the CSV's `f32`
/// values widened to `f64` (`NaN` = missing).
///
/// # Errors
/// [`PrequentialError::Input`] when the file cannot be read, a column is
/// missing, or the family has no regressor.
pub fn run_online_regression(
    opts: &RegressionOptions,
) -> Result<OnlineRegressionReport, PrequentialError> {
    let file = opts.file.display().to_string();
    let input = |reason: String| PrequentialError::Input {
        file: file.clone(),
        reason,
    };
    let data = crate::ingest::csv_file::read_labelled_csv(&opts.file, &opts.label, &opts.features)
        .map_err(|reason| input(super::prequential::without_file(&file, reason)))?;
    let nf = data.features.len();
    let mut model = OnlineRegression::new(opts.family, nf, opts.seed).ok_or_else(|| {
        input(format!(
            "online family {} has no regressor: use hoeffding_tree or arf",
            opts.family
        ))
    })?;
    let rows: Vec<(usize, f64)> = data
        .labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.trim()
                .parse::<f64>()
                .ok()
                .filter(|y| y.is_finite())
                .map(|y| (i, y))
        })
        .collect();
    let n = rows.len() as u64;
    let seg_len = n.div_ceil(opts.segments.max(1) as u64).max(1);
    let n_segments = n.div_ceil(seg_len) as usize;
    let mut seg_abs = vec![0.0f64; n_segments];
    let mut x = vec![0.0f64; nf];
    let mut preds = Vec::with_capacity(rows.len());
    let started = std::time::Instant::now();
    for (k, &(i, y)) in rows.iter().enumerate() {
        for (xi, v) in x.iter_mut().zip(data.row(i)) {
            *xi = f64::from(*v);
        }
        let wrong_width = |e: OnlineError| input(format!("row {i}: {e}"));
        let p = model.predict_one(&x).map_err(wrong_width)?;
        seg_abs[k / seg_len as usize] += (y - p).abs();
        preds.push(p);
        model.learn_one(&x, y).map_err(wrong_width)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let segments = (0..n_segments)
        .map(|s| {
            let (start, end) = (s as u64 * seg_len, ((s as u64 + 1) * seg_len).min(n));
            RegressionSegment {
                start,
                end,
                mae: (end > start).then(|| seg_abs[s] / (end - start) as f64),
            }
        })
        .collect();
    let ys: Vec<f64> = rows.iter().map(|(_, y)| *y).collect();
    let (mae, rmse, r2) = errors(&ys, &preds);
    let previous = (ys.len() > 1)
        .then(|| ys.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (ys.len() - 1) as f64);
    Ok(OnlineRegressionReport {
        file,
        family: opts.family.name().to_string(),
        rows: n,
        skipped: data.labels.len() as u64 - n,
        features: data.features.clone(),
        mae,
        rmse,
        r2,
        previous_value_mae: previous,
        segments,
        rows_per_second: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        seconds,
        peak_rss_bytes: super::prequential::peak_rss_bytes(),
    })
}

/// MAE, RMSE and R² of `preds` against `ys` (`None` without rows; R² `None`
/// when the targets do not vary).
fn errors(ys: &[f64], preds: &[f64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    if ys.is_empty() {
        return (None, None, None);
    }
    let n = ys.len() as f64;
    let mean = ys.iter().sum::<f64>() / n;
    let (mut abs, mut sse, mut sst) = (0.0, 0.0, 0.0);
    for (y, p) in ys.iter().zip(preds) {
        abs += (y - p).abs();
        sse += (y - p) * (y - p);
        sst += (y - mean) * (y - mean);
    }
    let r2 = (sst > 0.0).then(|| 1.0 - sse / sst);
    (Some(abs / n), Some((sse / n).sqrt()), r2)
}

/// The report as a table for people.
pub fn render_online_regression(r: &OnlineRegressionReport) -> String {
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
    let mut out = format!(
        "prequential replay of {} ({} rows, {} features, regression) through {}: \
         predict then learn, each row in order\n\n\
         rows            MAE\n",
        r.file,
        r.rows,
        r.features.len(),
        r.family
    );
    for s in &r.segments {
        out.push_str(&format!(
            "{:<15} {}\n",
            format!("{}-{}", s.start, s.end),
            f(s.mae)
        ));
    }
    out.push_str(&format!(
        "\noverall: prequential MAE {}, RMSE {}, R² {} over {} rows; {:.0} rows/s ({:.3} s)\n\
         baseline, the previous row's target: MAE {}\n",
        f(r.mae),
        f(r.rmse),
        f(r.r2),
        r.rows,
        r.rows_per_second,
        r.seconds,
        f(r.previous_value_mae)
    ));
    if r.skipped > 0 {
        out.push_str(&format!("{} rows skipped: label not a number\n", r.skipped));
    }
    if let Some(b) = r.peak_rss_bytes {
        out.push_str(&format!(
            "peak resident memory {:.1} MiB (the process, the file as read included)\n",
            b as f64 / (1024.0 * 1024.0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::errors;

    #[test]
    fn errors_of_a_small_series() {
        // y = [1, 2, 3], predictions [1, 1, 5]: |e| = 0, 1, 2; SSE 5, SST 2.
        let (mae, rmse, r2) = errors(&[1.0, 2.0, 3.0], &[1.0, 1.0, 5.0]);
        assert_eq!(mae, Some(1.0));
        assert!((rmse.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(r2, Some(1.0 - 5.0 / 2.0));
        assert_eq!(errors(&[2.0, 2.0], &[2.0, 2.0]).2, None);
    }
}
