//! `edgeloop anomaly`: Half-Space Trees anomaly scores of a CSV stream and
//! the daemon's alarm rules ([`crate::monitor::anomaly::Scorer`]), no
//! labels needed; `edgeloop detect`: a
//! drift detector (ADWIN, DDM, Page-Hinkley; [`crate::monitor::detectors`])
//! over one column; `edgeloop drift`: data drift of windows against a
//! reference under serial dependence
//! ([`crate::monitor::data_drift::compare_dependent`]).

use std::path::PathBuf;

use crate::ingest::csv_file::{describe_csv_error, no_column};
use crate::monitor::anomaly::{AnomalyConfig, Scorer};
use crate::monitor::data_drift::DependentDriftConfig;

/// `edgeloop anomaly`.
#[derive(clap::Args)]
pub struct AnomalyArgs {
    /// CSV file with a header row, rows in time order.
    #[arg(long)]
    file: PathBuf,
    /// Columns scored, comma-separated.
    ///
    /// Default: every column whose first row is a number, but the --label
    /// and --device columns. The columns used are printed (JSON:
    /// `features`).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Column of the file's label: never scored (default: none).
    ///
    /// A labelled file's label is not a reading; --features may not name it.
    #[arg(long)]
    label: Option<String>,
    /// Column of each row's device: residual and level rules per device.
    ///
    /// Each device's rows are scored against its own earlier rows, as the
    /// daemon scores each device's readings (the trees and their threshold
    /// stay one for the file). Without it, every row is one stream's.
    #[arg(long)]
    device: Option<String>,
    /// Devices whose rules are kept with --device (at least 1).
    ///
    /// A new device beyond them forgets the least recently seen one.
    #[arg(long, default_value_t = AnomalyConfig::default().max_devices)]
    max_devices: usize,
    /// Trees (River's default 10).
    #[arg(long, default_value_t = 10)]
    trees: usize,
    /// Levels below the root of each tree (River's default 8).
    #[arg(long, default_value_t = 8)]
    height: u32,
    /// Readings per mass window (River's default 250).
    ///
    /// Scores are 0 during the first window.
    #[arg(long, default_value_t = 250)]
    window: u32,
    /// Seed of the trees (River's `seed`; the same seed draws River's trees).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Alarm above this quantile of the last `--history` scores.
    ///
    /// 0.999 was chosen on the shipped NAB files (benches/nab_score.py).
    #[arg(long, default_value_t = 0.999)]
    quantile: f64,
    /// Scores (after the first window) seen before the first alarm.
    #[arg(long, default_value_t = 1000)]
    calibration: usize,
    /// Scores the threshold is the quantile of (the last N).
    ///
    /// The last N non-zero scores before each reading; at least
    /// --calibration.
    #[arg(long, default_value_t = 5000)]
    history: usize,
    /// Scores above the threshold among the last --persistence-window.
    ///
    /// This one above and among them; 1: each score above.
    #[arg(long, default_value_t = AnomalyConfig::default().persistence)]
    persistence: usize,
    /// The window of --persistence, in rows (--persistence: in a row).
    #[arg(long, default_value_t = AnomalyConfig::default().persistence_window)]
    persistence_window: usize,
    /// Also alarm on a feature this many smoothed MADs from its EWMA (0: off).
    ///
    /// A feature's residual against its exponentially weighted moving
    /// average, in smoothed mean absolute deviations, above this and above
    /// the --quantile of the last --history residuals (once --calibration
    /// were seen); 0 leaves the Half-Space Trees alone.
    #[arg(long, default_value_t = AnomalyConfig::default().residual_z)]
    residual_z: f64,
    /// Smoothing factor of the residual test's EWMA and MAD, in (0, 1].
    #[arg(long, default_value_t = AnomalyConfig::default().residual_alpha)]
    residual_alpha: f64,
    /// Rows learned before the residual test may alarm.
    #[arg(long, default_value_t = AnomalyConfig::default().residual_warmup)]
    residual_warmup: usize,
    /// Residual limit at least this times its own earlier quantile (0: off).
    ///
    /// The residual test's limit is also at least this factor times the
    /// --residual-margin-quantile of the earlier residual z-scores (the
    /// last --history non-zero ones), from the first on: a stream whose
    /// ordinary rows already jump raises its own bar before --calibration
    /// residuals exist. At least 1.
    #[arg(long, default_value_t = AnomalyConfig::default().residual_margin)]
    residual_margin: f64,
    /// The quantile --residual-margin multiplies, in (0, 1).
    #[arg(long, default_value_t = AnomalyConfig::default().residual_margin_quantile)]
    residual_margin_quantile: f64,
    /// Level rule: alarm on a new record of the level distance by this factor (0: off).
    ///
    /// A row's level distance: the root sum of squares over the features
    /// of |value - median| / (interquartile range / 1.349), median and
    /// quartiles those of the feature's earlier rows. From row
    /// --level-warmup until the trees' threshold can exist (--window +
    /// --calibration rows), a row alarms when its distance exceeds this
    /// many times the largest distance before it.
    #[arg(long, default_value_t = AnomalyConfig::default().level_margin)]
    level_margin: f64,
    /// Rows learned before the level rule may alarm (at least 50).
    #[arg(long, default_value_t = AnomalyConfig::default().level_warmup)]
    level_warmup: usize,
    /// Level rule's dispersion term: mean absolute step over this many rows (0: off).
    ///
    /// Each feature adds ln(max(mean |x_t - x_{t-1}| over the last this
    /// many rows, its smallest non-zero step)) to the level distance,
    /// scored against its earlier values as the level is: an onset that
    /// keeps the level but changes how much the readings move alarms. At
    /// most --level-warmup.
    #[arg(long, default_value_t = AnomalyConfig::default().level_dispersion)]
    level_dispersion: usize,
    /// An alarm more than this many rows after the last one opens an episode.
    #[arg(long, default_value_t = AnomalyConfig::default().episode_gap)]
    episode_gap: usize,
    /// Print scores, residual z-scores, alarms, rules and episodes as JSON.
    ///
    /// `{"features", "threshold", "residual_limit", "scores", "residual_z",
    /// "level", "alarms", "rules", "episodes"}`: `scores`, `residual_z` and
    /// `level` (the level distance, 0 once that rule retired) hold one
    /// value per row, `alarms` the row indices, `rules` the rule of each
    /// alarm ("trees", "residual", "both" or "level"), `episodes` the rows
    /// of the alarms that open an episode. With --device, `residual_limit`
    /// is an object (device: limit) and `devices_evicted` counts the
    /// devices forgotten for --max-devices.
    #[arg(long)]
    json: bool,
}

/// The columns a command reads beside its features: the label (`--label`),
/// never a feature, and the device or time column (`--device`,
/// `--timestamp`), not a feature unless `--features` names it.
struct OtherColumns<'a> {
    label: Option<&'a str>,
    other: Option<&'a str>,
}

/// The columns `features` of a CSV file with a header row (empty: every
/// column whose first value is a number but `others`), as rows of values in
/// that order; an empty or non-numeric value is NaN.
///
/// # Errors
/// The file; a column of `features` or `others` it lacks (named); the label
/// named in `features`; no feature left.
fn read_columns(
    file: &std::path::Path,
    features: &[String],
    others: OtherColumns<'_>,
) -> anyhow::Result<(Vec<String>, Vec<Vec<f64>>)> {
    let mut reader =
        csv::Reader::from_path(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e)))?
        .clone();
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e)))?;
    let label = others.label;
    let others: Vec<&str> = [others.label, others.other].into_iter().flatten().collect();
    for column in &others {
        anyhow::ensure!(
            headers.iter().any(|h| h == *column),
            "{}: {}",
            file.display(),
            no_column(column, &headers)
        );
    }
    let features: Vec<String> = if features.is_empty() {
        let first = records
            .first()
            .ok_or_else(|| anyhow::anyhow!("{}: no rows", file.display()))?;
        headers
            .iter()
            .zip(first.iter())
            .filter(|(h, v)| !others.contains(h) && v.trim().parse::<f64>().is_ok())
            .map(|(h, _)| h.to_string())
            .collect()
    } else {
        features.to_vec()
    };
    if let Some(label) = label.filter(|l| features.iter().any(|f| f == l)) {
        anyhow::bail!("--features names `{label}`, the --label column: a label is never a feature");
    }
    anyhow::ensure!(
        !features.is_empty(),
        "no numeric column in {}{}",
        file.display(),
        match others.as_slice() {
            [] => String::new(),
            o => format!(
                " besides {}",
                o.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        }
    );
    let columns: Vec<usize> = features
        .iter()
        .map(|f| {
            headers
                .iter()
                .position(|h| h == f)
                .ok_or_else(|| anyhow::anyhow!("{}: {}", file.display(), no_column(f, &headers)))
        })
        .collect::<Result<_, _>>()?;
    let rows = records
        .iter()
        .map(|rec| {
            columns
                .iter()
                .map(|&c| {
                    rec.get(c)
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect();
    Ok((features, rows))
}

/// The times of column `column` of a CSV file, ms since the Unix epoch:
/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` or `YYYY-MM-DDTHH:MM:SS[.f]` (a
/// naive time is taken as UTC), or epoch seconds (ms above 1e11).
///
/// # Errors
/// The file, a missing column, or a row whose time cannot be read (named).
fn read_times(file: &std::path::Path, column: &str) -> anyhow::Result<Vec<i64>> {
    read_text(file, column)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_time(s).ok_or_else(|| {
                anyhow::anyhow!("{} row {}: `{s}` is not a time", file.display(), i + 1)
            })
        })
        .collect()
}

/// The values of column `column` of a CSV file, as text (trimmed).
///
/// # Errors
/// The file, or a missing column (named).
fn read_text(file: &std::path::Path, column: &str) -> anyhow::Result<Vec<String>> {
    let mut reader =
        csv::Reader::from_path(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e)))?
        .clone();
    let c = headers
        .iter()
        .position(|h| h == column)
        .ok_or_else(|| anyhow::anyhow!("{}: {}", file.display(), no_column(column, &headers)))?;
    reader
        .records()
        .map(|rec| {
            let rec = rec.map_err(|e| {
                anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e))
            })?;
            Ok(rec.get(c).unwrap_or("").trim().to_string())
        })
        .collect()
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let x: f64 = s
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x >= 0.0)?;
    Some(if x > 1e11 { x } else { x * 1000.0 } as i64)
}

/// Scores every row (score, then learn: each score uses only earlier rows)
/// and prints the scores and the alarms.
pub fn anomaly(args: AnomalyArgs) -> anyhow::Result<()> {
    let (features, rows) = read_columns(
        &args.file,
        &args.features,
        OtherColumns {
            label: args.label.as_deref(),
            other: args.device.as_deref(),
        },
    )?;
    let devices = match &args.device {
        Some(column) => Some(read_text(&args.file, column)?),
        None => None,
    };
    // The daemon's scorer ([pipelines.anomaly]), with these settings.
    let cfg = AnomalyConfig {
        enabled: true,
        trees: args.trees,
        height: args.height,
        window: args.window,
        seed: args.seed,
        quantile: args.quantile,
        calibration: args.calibration,
        history: args.history,
        persistence: args.persistence,
        persistence_window: args.persistence_window,
        residual_z: args.residual_z,
        residual_alpha: args.residual_alpha,
        residual_warmup: args.residual_warmup,
        residual_margin: args.residual_margin,
        residual_margin_quantile: args.residual_margin_quantile,
        level_margin: args.level_margin,
        level_warmup: args.level_warmup,
        level_dispersion: args.level_dispersion,
        episode_gap: args.episode_gap,
        max_devices: args.max_devices,
    };
    // The daemon's checks of `[pipelines.anomaly]`, on these flags.
    if let Err((key, reason)) = cfg.validate() {
        anyhow::bail!("--{}: {reason}", key.replace('_', "-"));
    }
    let mut scorer = Scorer::new(&cfg, &features);
    let mut scores = Vec::with_capacity(rows.len());
    let mut residual_z = Vec::with_capacity(rows.len());
    let mut level = Vec::with_capacity(rows.len());
    let (mut alarms, mut rules, mut episodes) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        let device = devices.as_ref().and_then(|d| d.get(i)).map(String::as_str);
        let s = scorer.score_then_learn_f64(device, row);
        if let Some(rule) = s.rule {
            alarms.push(i);
            rules.push(rule.as_str());
        }
        if s.episode {
            episodes.push(i);
        }
        scores.push(s.score);
        residual_z.push(s.residual_z);
        level.push(s.level);
    }
    let threshold = scorer.threshold();
    let residual_limit = scorer.residual_limit(None);
    // Per device (--device): each kept device's limit, in name order.
    let limits: Option<std::collections::BTreeMap<&str, Option<f64>>> = devices.as_ref().map(|d| {
        d.iter()
            .map(|d| (d.as_str(), scorer.residual_limit(Some(d))))
            .collect()
    });
    if args.json {
        let mut out = serde_json::json!({
            "features": features,
            "threshold": threshold,
            "residual_limit": residual_limit,
            "scores": scores,
            "residual_z": residual_z,
            "level": level,
            "alarms": alarms,
            "rules": rules,
            "episodes": episodes,
        });
        if let Some(limits) = &limits {
            out["residual_limit"] = serde_json::json!(limits);
            out["devices_evicted"] = serde_json::json!(scorer.evicted());
        }
        outln!("{out}")?;
    } else {
        outln!(
            "{} rows, features {}; threshold {} ({} quantile of the last {} scores, {} of {} rows), residual z above {}; {} alarms in {} episodes{}",
            scores.len(),
            features.join(","),
            threshold.map_or("not reached".into(), |t| format!("{t:.4}")),
            args.quantile,
            args.history,
            args.persistence,
            args.persistence_window,
            match &limits {
                Some(l) => {
                    let l: Vec<f64> = l.values().flatten().copied().collect();
                    let (lo, hi) = l.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
                    if l.is_empty() {
                        "off".into()
                    } else {
                        format!("{lo:.2} to {hi:.2} (per device, {} devices)", l.len())
                    }
                }
                None => residual_limit.map_or("off".into(), |t| format!("{t:.2}")),
            },
            alarms.len(),
            episodes.len(),
            if alarms.is_empty() {
                String::new()
            } else {
                format!(
                    " at rows {}",
                    alarms
                        .iter()
                        .take(20)
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )?;
    }
    Ok(())
}

/// `edgeloop detect`.
#[derive(clap::Args)]
pub struct DetectArgs {
    /// CSV file with a header row, rows in time order.
    #[arg(long)]
    file: PathBuf,
    /// The column fed to the detector (an error stream of 0/1 for ddm).
    #[arg(long)]
    column: String,
    /// adwin, ddm or page_hinkley (River's ADWIN, binary.DDM, PageHinkley).
    #[arg(long, value_parser = ["adwin", "ddm", "page_hinkley"])]
    detector: String,
    /// A detector parameter, NAME=VALUE (repeatable).
    ///
    /// adwin `delta`,
    /// `clock`, `max_buckets`, `min_window_length`, `grace_period`; ddm
    /// `warm_start`, `warning_threshold`, `drift_threshold`; page_hinkley
    /// `min_instances`, `delta`, `threshold`, `alpha`, `mode` (up, down,
    /// both). River's defaults otherwise (the same keys as
    /// `[pipelines.drift.adwin]` etc. in the configuration).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Feed the detector z-scores instead of the values.
    ///
    /// Each value against the mean and standard deviation of the values
    /// before it, as `[pipelines.drift] standardize`.
    #[arg(long)]
    standardize: bool,
    /// Print `{"detector", "params", "rows", "standardize", "alarms": [row
    /// indices]}`.
    #[arg(long)]
    json: bool,
}

/// Feeds the column to the detector row by row and prints the rows that
/// raised an alarm (the detector restarts after each, as River's).
pub fn detect(args: DetectArgs) -> anyhow::Result<()> {
    use crate::monitor::detectors::{
        Adwin, AdwinConfig, Ddm, DdmConfig, DriftDetector, PageHinkley, PageHinkleyConfig,
    };
    let mut params = serde_json::Map::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param `{p}`: expected NAME=VALUE"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
        params.insert(k.to_string(), value);
    }
    let object = serde_json::Value::Object(params);
    let bad = |e: serde_json::Error| anyhow::anyhow!("--param for {}: {e}", args.detector);
    let (mut detector, used): (Box<dyn DriftDetector>, serde_json::Value) =
        match args.detector.as_str() {
            "adwin" => {
                let c: AdwinConfig = serde_json::from_value(object).map_err(bad)?;
                (Box::new(Adwin::new(c)), serde_json::to_value(c)?)
            }
            "ddm" => {
                let c: DdmConfig = serde_json::from_value(object).map_err(bad)?;
                (Box::new(Ddm::new(c)), serde_json::to_value(c)?)
            }
            _ => {
                let c: PageHinkleyConfig = serde_json::from_value(object).map_err(bad)?;
                (Box::new(PageHinkley::new(c)), serde_json::to_value(c)?)
            }
        };
    anyhow::ensure!(
        !(args.standardize && args.detector == "ddm"),
        "--standardize: ddm watches a 0/1 stream"
    );
    // The daemon's checks of `[pipelines.drift.adwin]`, `.ddm`,
    // `.page_hinkley` (ADWIN's delta in (0, 1), …), on these parameters.
    let mut drift = crate::monitor::DriftConfig::default();
    match args.detector.as_str() {
        "adwin" => drift.adwin = serde_json::from_value(used.clone())?,
        "ddm" => drift.ddm = serde_json::from_value(used.clone())?,
        _ => drift.page_hinkley = serde_json::from_value(used.clone())?,
    }
    if let Err((key, reason)) = drift.validate() {
        anyhow::bail!("--param for {}: `{key}` {reason}", args.detector);
    }
    if args.standardize {
        detector = Box::new(crate::monitor::detectors::Standardized::new(detector));
    }
    let mut reader = csv::Reader::from_path(&args.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let file = &args.file;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e)))?
        .clone();
    let column = headers
        .iter()
        .position(|h| h == args.column)
        .ok_or_else(|| {
            anyhow::anyhow!("{}: {}", file.display(), no_column(&args.column, &headers))
        })?;
    let (mut rows, mut alarms) = (0usize, Vec::new());
    for (i, rec) in reader.records().enumerate() {
        let rec = rec
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), describe_csv_error(file, &e)))?;
        let text = rec.get(column).unwrap_or("").trim();
        // A NaN or an infinity would stay in the detector's sums and
        // silence it for the rest of the file.
        let x: f64 = text
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| anyhow::anyhow!("row {}: `{text}` is not a finite number", i + 1))?;
        if detector.update(x) {
            alarms.push(i);
        }
        rows += 1;
    }
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "detector": args.detector,
                "params": used,
                "standardize": args.standardize,
                "rows": rows,
                "alarms": alarms,
            })
        )?;
    } else {
        outln!(
            "{} over {rows} rows ({used}): {} alarms{}",
            args.detector,
            alarms.len(),
            if alarms.is_empty() {
                String::new()
            } else {
                format!(
                    " at rows {}",
                    alarms
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )?;
    }
    Ok(())
}

/// `edgeloop drift`.
#[derive(clap::Args)]
pub struct DriftArgs {
    /// CSV file with a header row, rows in time order.
    #[arg(long)]
    file: PathBuf,
    /// Columns compared, comma-separated.
    ///
    /// Default: every column whose first row is a number, but the --label
    /// and --timestamp columns. The columns used are printed (JSON:
    /// `features`).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Column of the file's label: never compared (default: none).
    ///
    /// A labelled file's label is not a reading; --features may not name it.
    #[arg(long)]
    label: Option<String>,
    /// Rows of the reference: the first N.
    #[arg(long, default_value_t = 2000)]
    reference: usize,
    /// Rows per compared window.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Rows between the starts of two windows.
    #[arg(long, default_value_t = 250)]
    step: usize,
    /// Significance of the KS test and the test of means at the effective
    /// sample sizes.
    #[arg(long, default_value_t = DependentDriftConfig::default().alpha)]
    alpha: f64,
    /// Effect-size floor: PSI at least this …
    #[arg(long, default_value_t = DependentDriftConfig::default().psi_floor)]
    psi_floor: f64,
    /// … or a mean shift of at least this many reference standard
    /// deviations.
    #[arg(long, default_value_t = DependentDriftConfig::default().shift_floor)]
    shift_floor: f64,
    /// Drift when this share of a window is outside the reference's range.
    ///
    /// Whatever the tests say (the share of readings below the reference's
    /// minimum or above its maximum), in (0, 1]; without it the share is
    /// reported, never a drift by itself.
    #[arg(long)]
    range_floor: Option<f64>,
    /// How the effective sample sizes count serial dependence.
    ///
    /// larger (the default: the larger of the two below),
    /// initial_positive (every lag while the autocorrelations stay
    /// positive, Geyer 1992) or lag1 (the lag-1 autocorrelation as an
    /// AR(1)'s).
    #[arg(long, default_value = "larger", value_parser = ["larger", "initial_positive", "lag1"])]
    dependence: String,
    /// Column of the readings' times, for a seasonal reference.
    ///
    /// RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (read as UTC), or epoch
    /// seconds/ms; see `--season`.
    #[arg(long)]
    timestamp: Option<String>,
    /// Seasons a window is compared within (needs --timestamp).
    ///
    /// Each window is compared with the reference rows of its seasons:
    /// none, hour_of_day, hour_and_weekend, hour_of_week (default none;
    /// hour_and_weekend with --timestamp).
    #[arg(long, value_parser = ["none", "hour_of_day", "hour_and_weekend", "hour_of_week"])]
    season: Option<String>,
    /// Reference rows a season bucket needs.
    ///
    /// A bucket with fewer takes its hour of day, then the whole reference.
    #[arg(long, default_value_t = 30)]
    min_bucket: usize,
    /// Print the windows and their per-feature figures as JSON.
    ///
    /// `{"features", "windows": [{"start", "end", "reference_rows", "drift",
    /// "features": {name: {psi,
    /// shift, ks_statistic, ks_p_value, ks_p_value_effective,
    /// mean_p_value_effective, outside_range, rho_reference, rho_current,
    /// tau_reference, tau_current, drifted}}}],
    /// "flagged", "total"}`.
    #[arg(long)]
    json: bool,
}

/// Compares each window after the reference with the reference and prints
/// which drifted.
pub fn drift(args: DriftArgs) -> anyhow::Result<()> {
    use crate::monitor::data_drift::{compare_dependent, seasonal_reference, Season};
    anyhow::ensure!(
        args.reference >= 10 && args.window >= 10,
        "--reference and --window need at least 10 rows"
    );
    let step = args.step;
    anyhow::ensure!(step >= 1, "--step must be at least 1");
    let season = match (args.season.as_deref(), &args.timestamp) {
        (None, None) | (Some("none"), _) => Season::None,
        (None, Some(_)) | (Some("hour_and_weekend"), _) => Season::HourAndWeekend,
        (Some("hour_of_day"), _) => Season::HourOfDay,
        (Some(_), _) => Season::HourOfWeek,
    };
    anyhow::ensure!(
        season == Season::None || args.timestamp.is_some(),
        "--season needs --timestamp COLUMN"
    );
    let times = match &args.timestamp {
        Some(column) => Some(read_times(&args.file, column)?),
        None => None,
    };
    let (features, rows) = read_columns(
        &args.file,
        &args.features,
        OtherColumns {
            label: args.label.as_deref(),
            other: args.timestamp.as_deref(),
        },
    )?;
    let rows: Vec<Vec<f32>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as f32).collect())
        .collect();
    anyhow::ensure!(
        rows.len() >= args.reference + args.window,
        "{} rows: fewer than --reference {} + --window {}",
        rows.len(),
        args.reference,
        args.window
    );
    anyhow::ensure!(
        args.range_floor.is_none_or(|f| f > 0.0 && f <= 1.0),
        "--range-floor must be in (0, 1]"
    );
    let cfg = DependentDriftConfig {
        alpha: args.alpha,
        psi_floor: args.psi_floor,
        shift_floor: args.shift_floor,
        range_floor: args.range_floor,
        dependence: match args.dependence.as_str() {
            "lag1" => crate::monitor::data_drift::Dependence::Lag1,
            "initial_positive" => crate::monitor::data_drift::Dependence::InitialPositive,
            _ => crate::monitor::data_drift::Dependence::Larger,
        },
        ..DependentDriftConfig::default()
    };
    let reference = &rows[..args.reference];
    let mut windows = Vec::new();
    let mut start = args.reference;
    while start + args.window <= rows.len() {
        let end = start + args.window;
        let matched: Vec<Vec<f32>>;
        let reference = match &times {
            Some(t) if season != Season::None => {
                let idx = seasonal_reference(
                    &t[..args.reference],
                    &t[start..end],
                    season,
                    args.min_bucket,
                );
                matched = idx.into_iter().map(|i| reference[i].clone()).collect();
                &matched[..]
            }
            _ => reference,
        };
        let result = compare_dependent(&features, reference, &rows[start..end], &cfg);
        let drift = result.iter().any(|f| f.drifted);
        let per_feature: serde_json::Map<String, serde_json::Value> = result
            .into_iter()
            .map(|f| (f.feature.clone(), serde_json::json!(f)))
            .collect();
        windows.push(serde_json::json!({
            "start": start,
            "end": end,
            "reference_rows": reference.len(),
            "drift": drift,
            "features": per_feature,
        }));
        start += step;
    }
    let flagged = windows.iter().filter(|w| w["drift"] == true).count();
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "features": features,
                "windows": windows,
                "flagged": flagged,
                "total": windows.len(),
            })
        )?;
    } else {
        outln!(
            "{flagged} of {} windows of {} rows drifted from the first {} rows; features {}",
            windows.len(),
            args.window,
            args.reference,
            features.join(",")
        )?;
        for w in windows.iter().filter(|w| w["drift"] == true) {
            let names: Vec<&str> = w["features"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(_, f)| f["drifted"] == true)
                        .map(|(k, _)| k.as_str())
                        .collect()
                })
                .unwrap_or_default();
            outln!("  rows {}..{}: {}", w["start"], w["end"], names.join(", "))?;
        }
    }
    Ok(())
}
