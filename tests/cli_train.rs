//! `edgeloop train`: any labelled CSV, no pipeline, the daemon's training
//! path; the comparison table, `--json` cards and `--export`.

#[path = "common/datasets.rs"]
mod datasets;

use std::process::Command;

fn edgeloop(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(args)
        .args(["--log-level", "error"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run edgeloop")
}

#[test]
fn auto_prints_one_card_per_family_as_json_and_exports_the_chosen_model() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("chosen.onnx");
    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/basic_motions_train.csv",
        "--label",
        "label",
        "--family",
        "auto",
        "--export",
        export.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cards: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let families: Vec<&str> = cards
        .iter()
        .map(|c| c["family"].as_str().unwrap())
        .collect();
    assert_eq!(families, ["logistic", "mlp", "tree", "forest", "svm"]);
    for c in &cards {
        assert_eq!(c["classes"].as_array().unwrap().len(), 4);
        assert_eq!(c["features"].as_array().unwrap().len(), 24);
        assert_eq!(c["n_holdout"], 8, "newest 20 % of 40 rows");
        assert!(c["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert!(c["training_cpu_ms"].as_f64().is_some());
    }
    let chosen = cards
        .iter()
        .find(|c| c["candidates"].as_array().is_some_and(|a| a.len() == 5))
        .expect("the chosen card lists the candidates");
    let bytes = std::fs::read(&export).unwrap();
    assert_eq!(chosen["onnx_bytes"].as_u64(), Some(bytes.len() as u64));
    let served = edgeloop::serve::engine::OnnxModel::load(&bytes).unwrap();
    assert_eq!(
        served.classes(),
        ["Badminton", "Running", "Standing", "Walking"]
    );
    // The table holds the same cards, one column each.
    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/occupancy_test.csv",
        "--label",
        "label",
        "--family",
        "auto",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table.lines().next().unwrap();
    for family in ["v1 logistic", "v1 mlp", "v1 tree", "v1 forest", "v1 svm"] {
        assert!(header.contains(family), "{header}");
    }
    for row in [
        "F1 (weighted)",
        "log loss",
        "ROC AUC",
        "predict µs/row (64)",
    ] {
        assert!(table.lines().any(|l| l.starts_with(row)), "{row}: {table}");
    }
    // Within 100 columns, every candidate kept, long cells cut; --wide:
    // whole cells (the chosen one's decision is the longest here).
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "{line}");
    }
    let decision = table.lines().find(|l| l.starts_with("decision")).unwrap();
    assert!(decision.ends_with('…'), "{decision}");
    assert!(
        table.contains("cells cut to") && table.contains("--wide shows them whole"),
        "{table}"
    );
    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/occupancy_test.csv",
        "--label",
        "label",
        "--family",
        "auto",
        "--wide",
    ]);
    assert!(out.status.success());
    let wide = String::from_utf8(out.stdout).unwrap();
    let decision = wide.lines().find(|l| l.starts_with("decision")).unwrap();
    assert!(decision.ends_with("promoted: first model"), "{decision}");
    assert!(wide.lines().any(|l| l.chars().count() > 100), "{wide}");
}

#[test]
fn regression_with_folds_prints_the_comparison_table() {
    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/air_quality_test.csv",
        "--label",
        "label",
        "--family",
        "ridge",
        "--folds",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    println!("{table}");
    assert!(table.contains("v1 ridge"), "{table}");
    assert!(table.contains("(3 folds)"), "{table}");
    assert!(table.contains("R²") && table.contains("RMSE"), "{table}");
    assert!(
        table.contains("1535 rows, regression; chosen: ridge"),
        "{table}"
    );
}

#[test]
fn bad_arguments_exit_non_zero_with_a_reason() {
    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/basic_motions_train.csv",
        "--label",
        "label",
        "--family",
        "boosting",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown family `boosting`"), "{err}");

    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/basic_motions_train.csv",
        "--label",
        "no_such_column",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no column `no_such_column`"));

    let out = edgeloop(&[
        "train",
        "--file",
        "tests/fixtures/datasets/basic_motions_train.csv",
        "--label",
        "label",
        "--family",
        "linear",
        "--task",
        "classification",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("config key `model.family`: `linear` cannot learn classification"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An error whose message already holds its cause is told once (before,
/// `edgeloop predict --model` of a file that is not ONNX printed "model
/// refused: not an ONNX model: …" twice on its line).
#[test]
fn an_error_is_told_once() {
    let out = edgeloop(&[
        "predict",
        "--model",
        "README.md",
        "--file",
        "data/occupancy_uci/datatest.txt",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("not an ONNX model").count(), 1, "{err}");
}

/// A column the file lacks, and a row with fewer fields than the header,
/// are told once, naming the file once, with the columns it has and the
/// row and line at fault, by every command that reads a CSV. Before,
/// `evaluate` named the file twice (`f.csv: f.csv: no column …`),
/// `anomaly`, `drift` and `detect` did not name it for a short row, and the
/// csv crate's "record 3 (line: 3 …)" gave the line before the row's.
#[test]
fn a_missing_column_or_a_short_row_names_the_file_the_columns_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nolight.csv");
    let mut text = String::from("Temperature,CO2,Occupancy\n");
    for i in 0..40 {
        text.push_str(&format!("{}.5,{},{}\n", 20 + i % 3, 400 + i, i % 2));
    }
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();
    let columns = "the columns are `Temperature`, `CO2`, `Occupancy`";
    for args in [
        vec![
            "train",
            "--file",
            f,
            "--label",
            "Occupancy",
            "--features",
            "Light",
        ],
        vec!["train", "--file", f, "--label", "Occ"],
        vec![
            "evaluate",
            "--prequential",
            "--file",
            f,
            "--label",
            "Occupancy",
            "--features",
            "Light",
        ],
        vec!["evaluate", "--prequential", "--file", f, "--label", "Occ"],
        vec!["anomaly", "--file", f, "--features", "Light"],
        vec!["drift", "--file", f, "--features", "Light"],
        vec![
            "detect",
            "--file",
            f,
            "--column",
            "Light",
            "--detector",
            "adwin",
        ],
    ] {
        let out = edgeloop(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("nolight.csv").count(), 1, "{args:?}: {err}");
        assert!(err.contains("no column `"), "{args:?}: {err}");
        assert!(err.contains(columns), "{args:?}: {err}");
    }
    // Data row 3 (line 4, after the header) has 2 fields of 3, with \n and
    // with \r\n line ends.
    for end in ["\n", "\r\n"] {
        let short = dir.path().join("short.csv");
        let rows = [
            "Temperature,CO2,Occupancy",
            "20.5,400,0",
            "21.5,401,1",
            "22.5,402",
            "20.5,403,1",
        ];
        std::fs::write(&short, rows.join(end) + end).unwrap();
        let s = short.to_str().unwrap();
        for args in [
            vec!["train", "--file", s, "--label", "Occupancy"],
            vec![
                "evaluate",
                "--prequential",
                "--file",
                s,
                "--label",
                "Occupancy",
            ],
            vec!["anomaly", "--file", s],
            vec!["drift", "--file", s],
            vec![
                "detect",
                "--file",
                s,
                "--column",
                "CO2",
                "--detector",
                "adwin",
            ],
        ] {
            let out = edgeloop(&args);
            assert!(!out.status.success(), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.matches("short.csv").count(), 1, "{args:?}: {err}");
            assert!(
                err.contains("row 3 (line 4) has 2 fields where the header has 3"),
                "{args:?} {end:?}: {err}"
            );
        }
    }
}

/// The label given among `--features` is refused, naming it: `train`
/// scored 1.0000 on datatraining.txt with `--features Light,Occupancy`.
#[test]
fn the_label_as_a_feature_is_refused() {
    let file = "data/occupancy_uci/datatraining.txt";
    for args in [
        vec![
            "train",
            "--file",
            file,
            "--label",
            "Occupancy",
            "--features",
            "Light,Occupancy",
        ],
        vec![
            "evaluate",
            "--prequential",
            "--file",
            file,
            "--label",
            "Occupancy",
            "--features",
            "Occupancy",
        ],
    ] {
        let out = edgeloop(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("`Occupancy` is the label and cannot be a feature too"),
            "{args:?}: {err}"
        );
    }
}

/// A `;`-separated file (a spreadsheet's export with decimal commas) is
/// named as such; before, the error was "found record with 2 fields, but
/// the previous record has 1 fields".
#[test]
fn a_semicolon_separated_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("semi.csv");
    std::fs::write(&file, "a;b;y\n1,5;2;0\n3;4;1\n").unwrap();
    let out = edgeloop(&["train", "--file", file.to_str().unwrap(), "--label", "y"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the header `a;b;y` is one column: the file looks separated by `;`"),
        "{err}"
    );
}

/// More folds than rows is named as such (before: "training data is
/// empty", from `train` and `tune` alike). datatraining.txt has 8,143 rows.
#[test]
fn more_folds_than_rows_is_named() {
    for command in [
        vec!["train"],
        vec!["tune", "--budget", "5s", "--max-trials", "1"],
    ] {
        let mut args = command.clone();
        args.extend([
            "--file",
            "data/occupancy_uci/datatraining.txt",
            "--label",
            "Occupancy",
            "--family",
            "logistic",
            "--folds",
            "100000",
        ]);
        let out = edgeloop(&args);
        assert!(!out.status.success(), "{command:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("100000 folds but only"), "{command:?}: {err}");
        assert!(
            !err.contains("training data is empty"),
            "{command:?}: {err}"
        );
    }
}

/// `edgeloop tune --threads 0` or `--max-trials 0` named the configuration
/// key (`model.search.threads`), which the user never wrote; the flag is
/// named now, as `edgeloop anomaly` names its own.
#[test]
fn tune_names_the_flag_it_refuses() {
    for (flag, value, want) in [
        ("--threads", "0", "--threads: must be at least 1"),
        ("--max-trials", "0", "--max-trials: must be at least 1"),
    ] {
        let out = edgeloop(&[
            "tune",
            "--file",
            "data/occupancy_uci/datatraining.txt",
            "--label",
            "Occupancy",
            "--budget",
            "5s",
            flag,
            value,
        ]);
        assert!(!out.status.success(), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flag} {value}: {err}");
        assert!(!err.contains("model.search"), "{flag} {value}: {err}");
    }
}

/// Each candidate's card carries its own peak resident memory: VmHWM, the
/// process's peak since it started, gave every card the same number. A
/// forest of 100 unlimited-depth trees on 12,000 rows of noise (every tree
/// grows to single-sample leaves) holds far more than a logistic model of
/// five weights, trained before it.
#[test]
fn each_candidate_reports_its_own_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, config) = datasets::noise_with_two_candidates(dir.path());
    let out = edgeloop(&[
        "train",
        "--pipeline",
        "noise",
        "--config",
        config.to_str().unwrap(),
        "--file",
        csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cards: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let peak = |family: &str| {
        cards
            .iter()
            .find(|c| c["family"] == family)
            .and_then(|c| c["peak_rss_bytes"].as_u64())
            .unwrap_or_else(|| panic!("no peak for {family}"))
    };
    let (logistic, forest) = (peak("logistic"), peak("forest"));
    assert!(logistic > 0);
    assert!(
        forest > logistic,
        "forest {forest} bytes, logistic {logistic}"
    );
}
