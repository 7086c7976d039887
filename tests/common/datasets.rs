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

/// 12,000 rows of seeded noise (`x1`..`x5` in [0, 1), labels `a`/`b` drawn
/// by a 64-bit LCG with Knuth's MMIX constants) written to `dir/noise.csv`,
/// and `dir/edgeloop.toml` with a pipeline `noise` whose candidates are
/// logistic regression and a forest of 100 unlimited-depth trees (every
/// tree grows to single-sample leaves on noise): the CSV's and the
/// config's paths.
pub fn noise_with_two_candidates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let csv = dir.join("noise.csv");
    let mut text = String::from("x1,x2,x3,x4,x5,y\n");
    let mut state: u64 = 42;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..12_000 {
        let row: Vec<String> = (0..5).map(|_| format!("{:.6}", next())).collect();
        let label = if next() < 0.5 { "a" } else { "b" };
        text.push_str(&format!("{},{label}\n", row.join(",")));
    }
    std::fs::write(&csv, text).unwrap();
    let config = dir.join("edgeloop.toml");
    std::fs::write(
        &config,
        "[[pipelines]]\nname = 'noise'\ntopics = ['noise/+']\n\
         features = ['x1', 'x2', 'x3', 'x4', 'x5']\nlabel = 'y'\n\
         [pipelines.model]\nfamily = 'auto'\ncandidates = ['logistic', 'forest']\n\
         [pipelines.model.forest]\nn_trees = 100\nmax_depth = 0\n",
    )
    .unwrap();
    (csv, config)
}
