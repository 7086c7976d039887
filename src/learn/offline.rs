//! `edgeloop train`: trains from any labelled CSV file, with no pipeline and
//! no daemon, through the code path the daemon uses ([`super::train_dataset`]).
//!
//! Rows are taken in file order as a time order: the holdout is the last
//! rows, as on a stream.

use std::path::PathBuf;

use super::card::ModelCard;
use super::{Dataset, Family, Task, TrainSettings, Training, Trigger};
use crate::ingest::categories::CategoryBook;
use crate::ingest::csv_file::{read_labelled_csv, read_labelled_csv_with, LabelledCsv};
use crate::learn::settings::ModelConfig;

/// What to train.
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    pub file: PathBuf,
    pub label: String,
    /// Feature columns; empty: every other column whose first value is numeric.
    pub features: Vec<String>,
    /// `None`: regression when every label is a number and there are more
    /// than [`MAX_CLASSES_GUESSED`] distinct ones, else classification.
    pub task: Option<Task>,
    /// Settings of the training (family, holdout fraction, folds...).
    pub model: ModelConfig,
    /// Name written into the cards.
    pub name: String,
    /// Write the chosen model's ONNX bytes here.
    pub export: Option<PathBuf>,
}

/// The settings a CSV command (`train`, `tune`) runs with: a configured
/// pipeline's (`--pipeline`), or the defaults with `family = "auto"`; then
/// the command line's label, features, task, family and folds over them.
#[derive(Debug, Clone)]
pub struct CsvSettings {
    pub label: String,
    pub features: Vec<String>,
    pub model: ModelConfig,
    /// `None`: guessed from the labels ([`guess_task`]).
    pub task: Option<Task>,
    /// Name written into the cards: the pipeline's, or `default_name`.
    pub name: String,
}

/// What the command line gave a CSV command.
#[derive(Debug, Clone, Default)]
pub struct CsvArgs {
    pub pipeline: Option<String>,
    pub label: Option<String>,
    pub features: Vec<String>,
    pub task: Option<String>,
    pub family: Option<String>,
    pub folds: Option<usize>,
}

/// Resolves `args` over `pipeline`, the settings of the configured pipeline
/// `args.pipeline` names (the caller reads them from the configuration), or
/// the defaults (`family = "auto"`) without one.
///
/// # Errors
/// A message naming the unknown task or family.
pub fn csv_settings(
    pipeline: Option<CsvSettings>,
    args: CsvArgs,
    default_name: &str,
) -> Result<CsvSettings, String> {
    let mut out = match pipeline {
        Some(p) => p,
        None => CsvSettings {
            label: String::new(),
            features: vec![],
            model: ModelConfig {
                family: Family::Auto,
                ..ModelConfig::default()
            },
            task: None,
            name: default_name.into(),
        },
    };
    if let Some(label) = args.label {
        out.label = label;
    }
    if !args.features.is_empty() {
        out.features = args.features;
    }
    out.task = match args.task.as_deref() {
        None => out.task,
        Some("classification") => Some(Task::Classification),
        Some("regression") => Some(Task::Regression),
        Some(other) => {
            return Err(format!(
                "--task `{other}`: use classification or regression"
            ))
        }
    };
    if let Some(f) = args.family {
        out.model.family = f.parse()?;
    }
    if let Some(k) = args.folds {
        out.model.folds = k;
        out.model.evaluation = super::select::Evaluation::Kfold;
    }
    Ok(out)
}

/// More distinct numeric labels than this make a guessed task regression.
pub const MAX_CLASSES_GUESSED: usize = 20;

/// What a training from a file produced.
#[derive(Debug, Clone)]
pub struct OfflineReport {
    pub task: Task,
    pub rows: usize,
    pub training: Training,
}

/// Reads the file, trains and, with `export`, writes the chosen model.
/// `progress` is told each family as its training starts (index, total).
///
/// # Errors
/// A message naming the file or the training error.
pub fn train_csv(
    opts: &OfflineOptions,
    progress: &dyn Fn(Family, usize, usize),
) -> Result<OfflineReport, String> {
    // Categorical columns: codes in a book of this file's strings.
    let mut model = opts.model.clone();
    let csv = if model.preprocess.categorical.is_empty() {
        read_labelled_csv(&opts.file, &opts.label, &opts.features)?
    } else {
        let book = std::sync::Arc::new(CategoryBook::in_memory(&model.preprocess.categorical));
        let csv = read_labelled_csv_with(&opts.file, &opts.label, &opts.features, Some(&book))?;
        model.preprocess.categories = Some(book);
        model
            .preprocess
            .validate(&csv.features)
            .map_err(|e| format!("preprocess.{e}"))?;
        csv
    };
    let task = opts.task.unwrap_or_else(|| guess_task(&csv.labels));
    let data = dataset(&csv, task);
    if data.is_empty() {
        return Err(format!(
            "{}: no usable rows (regression needs numeric labels)",
            opts.file.display()
        ));
    }
    let families = super::candidate_families(&opts.model, task).map_err(|e| e.to_string())?;
    let step = std::sync::atomic::AtomicUsize::new(0);
    let total = families.len();
    let settings = TrainSettings {
        pipeline: &opts.name,
        features: &csv.features,
        model: &model,
        progress: Some(&|family: Family| {
            let i = step.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            progress(family, i.min(total - 1), total);
        }),
        peak_rss: true,
    };
    // Each card's `peak_rss_bytes` is its candidate's own peak
    // (`TrainSettings::peak_rss`).
    let training =
        super::train_dataset(&settings, &data, None, 1, Trigger::Manual, None, &|| false)
            .map_err(|e| e.to_string())?;
    if let Some(path) = &opts.export {
        std::fs::write(path, &training.chosen.onnx)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(OfflineReport {
        task,
        rows: csv.len(),
        training,
    })
}

/// Regression when every label is a number and more than
/// [`MAX_CLASSES_GUESSED`] distinct values occur; else classification.
pub fn guess_task(labels: &[String]) -> Task {
    let numeric = labels.iter().all(|l| l.trim().parse::<f64>().is_ok());
    let distinct = labels
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if numeric && distinct > MAX_CLASSES_GUESSED {
        Task::Regression
    } else {
        Task::Classification
    }
}

/// The file's rows as a dataset; timestamps are row numbers. For regression,
/// rows whose label is not a finite number are left out.
pub fn dataset(csv: &LabelledCsv, task: Task) -> Dataset {
    let samples: Vec<crate::ingest::decode::Sample> = csv
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| crate::ingest::decode::Sample {
            timestamp_ms: i as i64,
            device: String::new(),
            features: csv.row(i).to_vec(),
            label: Some(label.clone()),
        })
        .collect();
    Dataset::from_samples(&samples, csv.features.len(), task)
}

/// The cards of a training, for printing: every candidate.
pub fn cards(report: &OfflineReport) -> &[ModelCard] {
    &report.training.candidates
}
