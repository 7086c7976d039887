//! Tables the command line prints keep within 100 columns; `--wide` prints
//! them whole (`edgeloop predict` here; `models list`, `history` and `train`
//! in tests/cli_walkthrough.rs and tests/cli_train.rs).

use std::process::Command;

fn predict(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "predict",
            "--model",
            "tests/fixtures/conformance/models/scaler_logreg_gas.onnx",
            "--file",
            "tests/fixtures/datasets/gas12_test.csv",
            "--engine",
            "tract",
            "--log-level",
            "error",
        ])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn predict_cuts_lines_at_100_columns_and_wide_prints_them_whole() {
    // A 6-class gas model: a label and 6 probabilities a row.
    let wide = predict(&["--wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.len(), 1 + 1 + 6, "{header:?}");
    assert_eq!(header[7], "probabilities[5]");
    assert!(wide.lines().any(|l| l.chars().count() > 100));
    assert!(!wide.contains('…'));

    let cut = predict(&[]);
    let lines: Vec<&str> = cut.lines().collect();
    assert_eq!(
        lines.len(),
        wide.lines().count() + 1,
        "one line more: the note"
    );
    for l in &lines {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert_eq!(
        *lines.last().unwrap(),
        "(lines cut at 100 columns; --wide shows them whole)"
    );
    // Each cut line is the start of the whole one.
    for (c, w) in lines.iter().zip(wide.lines()) {
        let kept = c.trim_end_matches('…');
        assert!(w.starts_with(kept), "{c} / {w}");
    }
}
