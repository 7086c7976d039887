//! A command whose stdout closes before it prints (`edgeloop tune … | head`)
//! ends quietly with status 0, as ripgrep does: no "failed printing to
//! stdout: Broken pipe" panic (`cli::StdoutClosed`); one whose stderr closes
//! keeps its own exit status (`errln!`).

use std::process::{Command, Output, Stdio};

/// Runs `edgeloop args` with stdout a pipe whose reader is already closed,
/// so its first write fails with EPIPE.
fn with_stdout_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(args)
        .args(["--log-level", "error"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet(args: &[&str]) {
    let out = with_stdout_closed(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
}

#[test]
fn predict_to_a_closed_pipe_exits_0_without_a_panic() {
    let predict = [
        "predict",
        "--model",
        "tests/fixtures/conformance/models/scaler_logreg_gas.onnx",
        "--file",
        "tests/fixtures/datasets/gas12_test.csv",
        "--engine",
        "tract",
    ];
    assert_quiet(&predict);
    assert_quiet(&[&predict[..], &["--json"]].concat());
}

#[test]
fn tune_to_a_closed_pipe_exits_0_without_a_panic() {
    let tune = [
        "tune",
        "--file",
        "tests/fixtures/datasets/basic_motions_train.csv",
        "--label",
        "label",
        "--family",
        "tree",
        "--budget",
        "30s",
        "--max-trials",
        "2",
    ];
    assert_quiet(&tune);
    assert_quiet(&[&tune[..], &["--json"]].concat());
}

#[test]
fn a_failing_command_still_fails_with_stdout_closed() {
    // The quiet exit is for EPIPE on stdout only: an error before any output
    // is still reported, with a non-zero status.
    let out = with_stdout_closed(&["predict", "--model", "missing.onnx", "--file", "x.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("edgeloop: "));
}

/// Runs `edgeloop args` with stdout discarded and stderr a pipe whose
/// reader is already closed; its exit status.
fn status_with_stderr_closed(args: &[&str]) -> Option<i32> {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .status()
        .unwrap()
        .code()
}

/// With stderr's reader gone, a command keeps its own status: `check-config`
/// of a valid file 0 (its "configuration is valid" line to stderr panicked:
/// 101), of a missing file 1 (the error line panicked too: 101).
#[test]
fn a_closed_stderr_leaves_the_commands_status() {
    assert_eq!(
        status_with_stderr_closed(&["check-config", "--config", "config/edgeloop.toml"]),
        Some(0)
    );
    assert_eq!(
        status_with_stderr_closed(&["check-config", "--config", "/nonexistent/edgeloop.toml"]),
        Some(1)
    );
}
