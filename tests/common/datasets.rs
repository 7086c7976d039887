//! The four reference datasets every model family is tested on, as written
//! by `tests/fixtures/datasets/prepare.py` (see its docstring for the splits).
//! Include with `#[path = "common/datasets.rs"] mod datasets;`.
#![allow(dead_code)]

use std::path::Path;

use edgeloop::config::ModelConfig;
use edgeloop::ingest::csv_file::LabelledCsv;
use edgeloop::learn::{
    self, offline, sort_classes, Dataset, Task, TrainSettings, Training, Trigger,
};

/// Names of the prepared datasets.
pub const CLASSIFICATION: [&str; 3] = ["occupancy", "gas12", "basic_motions"];
pub const REGRESSION: [&str; 1] = ["air_quality"];

/// One split of a dataset.
#[derive(Debug, Clone)]
pub struct Split {
    pub features: Vec<String>,
    /// `[n, n_features]` row-major, `NaN` = missing.
    pub x: Vec<f32>,
    /// The label column as written.
    pub labels: Vec<String>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Class indices of the labels into `classes`.
    pub fn class_indices(&self, classes: &[String]) -> Vec<usize> {
        self.labels
            .iter()
            .map(|l| {
                classes
                    .iter()
                    .position(|c| c == l)
                    .expect("label in classes")
            })
            .collect()
    }

    /// The labels as real numbers (regression).
    pub fn values(&self) -> Vec<f64> {
        self.labels
            .iter()
            .map(|l| l.parse().expect("numeric label"))
            .collect()
    }
}

/// `(train, test, classes)`; `classes` is the sorted union of both splits'
/// labels (empty for a regression dataset).
pub fn load(name: &str) -> (Split, Split, Vec<String>) {
    let train = read(&format!("{name}_train.csv"));
    let test = read(&format!("{name}_test.csv"));
    let classes = if REGRESSION.contains(&name) {
        vec![]
    } else {
        sort_classes(train.labels.iter().chain(&test.labels).cloned())
    };
    (train, test, classes)
}

fn read(file: &str) -> Split {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets")
        .join(file);
    let mut reader = csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let nf = header.len() - 1;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.unwrap();
        for v in record.iter().take(nf) {
            x.push(if v.is_empty() {
                f32::NAN
            } else {
                v.parse::<f32>().unwrap()
            });
        }
        labels.push(record[nf].to_string());
    }
    Split {
        features: header[..nf].to_vec(),
        x,
        labels,
    }
}

/// Train then test split of `name` as one stream in file order (the newest
/// 20 % is then the temporal holdout), and its feature names.
pub fn stream(name: &str, task: Task) -> (Dataset, Vec<String>) {
    let (train, test, _) = load(name);
    let mut x = train.x.clone();
    x.extend_from_slice(&test.x);
    let labels: Vec<String> = train.labels.iter().chain(&test.labels).cloned().collect();
    let csv = LabelledCsv {
        features: train.features.clone(),
        x,
        labels,
    };
    (offline::dataset(&csv, task), train.features)
}

/// Settings of a training of `features` with `model`, named "test".
pub fn settings<'a>(features: &'a [String], model: &'a ModelConfig) -> TrainSettings<'a> {
    TrainSettings {
        pipeline: "test",
        features,
        model,
        progress: None,
        peak_rss: false,
    }
}

/// One manual training of `data` with `model` through the loop's path
/// (`learn::train_dataset`), as version 1 with no champion.
pub fn train(data: &Dataset, features: &[String], model: &ModelConfig) -> Training {
    learn::train_dataset(
        &settings(features, model),
        data,
        None,
        1,
        Trigger::Manual,
        None,
        &|| false,
    )
    .unwrap()
}
