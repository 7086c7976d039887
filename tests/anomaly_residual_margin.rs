//! The residual rule's own-quantile margin of `edgeloop anomaly` and the
//! daemon's scorer (`src/learn/anomaly.rs`, `AnomalyConfig::residual_margin`;
//! issue 18): on a seeded short run whose ordinary readings jump (a smart
//! watch at badminton) beside a motor current that steps up at row 570
//! (`tests/fixtures/anomaly/gen_residual_margin.py`, which computes the rule
//! with numpy from its description), every row's residual z, the alarms and
//! the last limit equal the script's: at the defaults (3 times the 0.95
//! quantile of the stream's earlier residual z-scores) only the step alarms,
//! where the fixed limit of 10 alarms on swings before it too.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anomaly")
        .join(name)
}

fn anomaly_json(extra: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["anomaly", "--json", "--level-margin", "0"])
        .args(["--features", "swing,current"])
        .args(extra)
        .arg("--file")
        .arg(fixture("residual_margin.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn values(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The residual z-scores within 1e-9 relative, the alarms exactly, the limit
/// after the last row within 1e-9 relative (numpy's quantile interpolates in
/// another order); with the level rule off and 1,140 rows (the trees'
/// threshold needs 1,250) every alarm is the residual rule's.
#[test]
fn residual_alarms_and_limit_equal_the_reference() {
    let r: Value =
        serde_json::from_slice(&std::fs::read(fixture("residual_margin.json")).unwrap()).unwrap();
    let onset = r["onset"].as_u64().unwrap();
    for (case, extra) in [
        ("defaults", &[][..]),
        ("off", &["--residual-margin", "0"][..]),
        (
            "strict",
            &[
                "--residual-margin",
                "2",
                "--residual-margin-quantile",
                "0.99",
            ][..],
        ),
    ] {
        let v = anomaly_json(extra);
        let ours = values(&v["residual_z"]);
        let want = values(&r["residual_z"]);
        assert_eq!(ours.len(), want.len());
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(close(*a, *b), "{case} row {i}: {a} vs {b}");
        }
        assert_eq!(v["alarms"], r[case]["alarms"], "{case}");
        assert!(v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x == "residual"));
        let limit = v["residual_limit"].as_f64().unwrap();
        let want_limit = r[case]["residual_limit"].as_f64().unwrap();
        assert!(close(limit, want_limit), "{case}: {limit} vs {want_limit}");
    }
    // The defaults alarm on the step alone; without the margin the swings
    // before it alarm too.
    let alarms = |case: &str| -> Vec<u64> {
        r[case]["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_u64().unwrap())
            .collect()
    };
    assert_eq!(alarms("defaults"), vec![onset]);
    let off = alarms("off");
    assert!(off.contains(&onset));
    assert!(off.iter().filter(|&&a| a < onset).count() >= 3, "{off:?}");
}

/// A margin below 1 would put the limit below the stream's own quantile,
/// and a quantile outside (0, 1) has no meaning: both refused, naming the
/// flag.
#[test]
fn the_residual_margin_flags_are_validated() {
    for (extra, named) in [
        (
            ["--residual-margin", "0.5"],
            "--residual-margin: must be 0 (off) or at least 1",
        ),
        (
            ["--residual-margin-quantile", "1"],
            "--residual-margin-quantile: must be in (0, 1)",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["anomaly", "--json"])
            .args(extra)
            .arg("--file")
            .arg(fixture("residual_margin.csv"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
