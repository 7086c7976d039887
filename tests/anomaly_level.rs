//! The level rule of `edgeloop anomaly` and the daemon's scorer
//! (`src/learn/anomaly.rs`, `LevelDistance`; issue 18): on a seeded short
//! run of three features with a level shift at row 570
//! (`tests/fixtures/anomaly/gen_level.py`, which computes the rule with
//! numpy from its description), every row's level distance and the alarms
//! equal the script's, with the rule on for the whole run (defaults) and
//! retired after `--window + --calibration` rows, with and without the
//! dispersion term (`--level-dispersion`); and on a pump that stops shaking
//! (the level kept, the steps a fifth), which only the dispersion term
//! catches.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anomaly")
        .join(name)
}

fn anomaly_json(extra: &[&str]) -> Value {
    anomaly_json_on("level.csv", "flow,pressure,temperature", extra)
}

fn anomaly_json_on(file: &str, features: &str, extra: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "anomaly",
            "--json",
            "--residual-z",
            "0",
            "--features",
            features,
        ])
        .args(extra)
        .arg("--file")
        .arg(fixture(file))
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

/// The distances within 1e-9 relative (numpy's quantile interpolates in
/// another order), the alarms exactly; with the residual rule off and 1,140
/// rows (the trees' threshold needs 1,250) every alarm is the level
/// rule's. The valve closing at row 570 alarms at once, and nothing before
/// it does.
#[test]
fn level_distances_and_alarms_equal_the_reference() {
    let r: Value = serde_json::from_slice(&std::fs::read(fixture("level.json")).unwrap()).unwrap();
    let (level, shaking) = (
        ("level.csv", "flow,pressure,temperature"),
        ("dispersion.csv", "vibration,current"),
    );
    for (name, (file, features), extra) in [
        ("defaults", level, &[][..]),
        (
            "retired",
            level,
            &["--window", "100", "--calibration", "500"][..],
        ),
        ("levels_alone", level, &["--level-dispersion", "0"][..]),
        ("dispersion", shaking, &[][..]),
        (
            "dispersion_levels_alone",
            shaking,
            &["--level-dispersion", "0"][..],
        ),
    ] {
        let v = anomaly_json_on(file, features, extra);
        let (ours, want) = (values(&v["level"]), values(&r[name]["level"]));
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{name} row {i}: ours {a}, numpy {b}"
            );
        }
        let level_alarms: Vec<&Value> = v["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .zip(v["rules"].as_array().unwrap())
            .filter(|(_, rule)| *rule == "level")
            .map(|(a, _)| a)
            .collect();
        let want_alarms: Vec<&Value> = r[name]["alarms"].as_array().unwrap().iter().collect();
        assert_eq!(level_alarms, want_alarms, "{name}");
        match name {
            "defaults" | "levels_alone" => {
                assert_eq!(v["alarms"], r[name]["alarms"]);
                assert_eq!(v["alarms"][0], 570);
            }
            "retired" => assert!(ours[600..].iter().all(|&d| d == 0.0)),
            // The shaking stops at 570: caught within a few readings with
            // the dispersion term, not at all without it.
            "dispersion" => {
                let first = v["alarms"][0].as_u64().unwrap();
                assert!((570..580).contains(&first), "{first}");
            }
            _ => assert_eq!(v["alarms"].as_array().unwrap().len(), 0),
        }
    }
    // Off: no distance, no alarm.
    let v = anomaly_json(&["--level-margin", "0"]);
    assert!(values(&v["level"]).iter().all(|&d| d == 0.0));
    assert_eq!(v["alarms"].as_array().unwrap().len(), 0);
}

/// A margin below 1 would alarm on most readings, and quartiles of fewer
/// than 50 readings are not used: both refused.
#[test]
fn the_level_keys_are_validated() {
    for (extra, named) in [
        (
            ["--level-margin", "0.5"],
            "--level-margin: must be 0 (off) or at least 1",
        ),
        (
            ["--level-warmup", "20"],
            "--level-warmup: must be at least 50",
        ),
        (
            ["--level-dispersion", "201"],
            "--level-dispersion: must be at most",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["anomaly", "--json"])
            .args(extra)
            .arg("--file")
            .arg(fixture("level.csv"))
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
