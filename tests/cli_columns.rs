//! The columns `edgeloop anomaly` and `edgeloop drift` read: by default
//! every numeric column but the `--label` column (and `--device`'s,
//! `--timestamp`'s), which is never a feature; the columns used are in the
//! JSON (`features`) and the text.

use std::process::{Command, Output};

use serde_json::Value;

/// 40 rows of two readings and a numeric 0/1 label, which a default of
/// "every numeric column" would take for a feature.
fn labelled_csv(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let mut text = String::from("a,b,label\n");
    for i in 0..40 {
        let label = u8::from(i >= 30);
        text.push_str(&format!("{},{},{label}\n", i % 7, 10 + i % 3));
    }
    let path = dir.path().join("labelled.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn edgeloop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(args)
        .args(["--log-level", "error"])
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let out = edgeloop(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr_of_failure(args: &[&str]) -> String {
    let out = edgeloop(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn anomaly_leaves_the_label_column_out() {
    let dir = tempfile::tempdir().unwrap();
    let csv = labelled_csv(&dir);
    let file = csv.to_str().unwrap();
    // Without --label nothing says `label` is one: every numeric column.
    let v = json(&["anomaly", "--file", file, "--json"]);
    assert_eq!(v["features"], serde_json::json!(["a", "b", "label"]));
    let v = json(&["anomaly", "--file", file, "--label", "label", "--json"]);
    assert_eq!(v["features"], serde_json::json!(["a", "b"]));
    assert_eq!(v["scores"].as_array().unwrap().len(), 40);
    // With --device too, both are left out.
    let v = json(&[
        "anomaly", "--file", file, "--label", "label", "--device", "b", "--json",
    ]);
    assert_eq!(v["features"], serde_json::json!(["a"]));
    // The text names the columns used.
    let out = edgeloop(&["anomaly", "--file", file, "--label", "label"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("features a,b;"), "{text}");
    // A label named as a feature, a label the file lacks, no feature left.
    let e = stderr_of_failure(&[
        "anomaly",
        "--file",
        file,
        "--label",
        "label",
        "--features",
        "a,label",
    ]);
    assert!(
        e.contains("--features names `label`, the --label column"),
        "{e}"
    );
    let e = stderr_of_failure(&["anomaly", "--file", file, "--label", "y"]);
    assert!(e.contains("no column `y`"), "{e}");
    let only = dir.path().join("only_label.csv");
    std::fs::write(&only, "device,label\n1,0\n2,1\n").unwrap();
    let only = only.to_str().unwrap();
    let e = stderr_of_failure(&[
        "anomaly", "--file", only, "--label", "label", "--device", "device",
    ]);
    assert!(
        e.contains("no numeric column in") && e.contains("besides `label` and `device`"),
        "{e}"
    );
}

#[test]
fn drift_leaves_the_label_column_out() {
    let dir = tempfile::tempdir().unwrap();
    let csv = labelled_csv(&dir);
    let file = csv.to_str().unwrap();
    let windows = ["--reference", "20", "--window", "10", "--step", "10"];
    let args = [&["drift", "--file", file, "--json"][..], &windows].concat();
    let v = json(&args);
    assert_eq!(v["features"], serde_json::json!(["a", "b", "label"]));
    let v = json(&[&args[..], &["--label", "label"]].concat());
    assert_eq!(v["features"], serde_json::json!(["a", "b"]));
    assert_eq!(v["total"], 2);
    for w in v["windows"].as_array().unwrap() {
        let compared: Vec<&String> = w["features"].as_object().unwrap().keys().collect();
        assert_eq!(compared, ["a", "b"], "{w}");
    }
    // The --timestamp column (epoch seconds here) is not compared either.
    let timed = [
        &args[..],
        &["--label", "label", "--timestamp", "a", "--season", "none"],
    ]
    .concat();
    assert_eq!(json(&timed)["features"], serde_json::json!(["b"]));
    let out = edgeloop(&[&["drift", "--file", file, "--label", "label"][..], &windows].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("; features a,b"), "{text}");
    let e = stderr_of_failure(
        &[
            &[
                "drift",
                "--file",
                file,
                "--label",
                "label",
                "--features",
                "label",
            ][..],
            &windows,
        ]
        .concat(),
    );
    assert!(
        e.contains("--features names `label`, the --label column"),
        "{e}"
    );
}

#[test]
fn help_says_the_label_is_never_a_feature() {
    for command in ["anomaly", "drift"] {
        let out = edgeloop(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--label <LABEL>"), "{command}: {help}");
        assert!(help.contains("but the --label"), "{command}: {help}");
    }
}
