//! `edgeloop drift` (issue 18): data drift of windows against a reference
//! under serial dependence (`monitor::data_drift::compare_dependent`), on
//! seeded AR(1) streams from `tests/fixtures/drift_windows/gen_ar1.py`
//! (unit marginal variance; 10,000 rows; the `_shift` copies gain +1
//! standard deviation from row 5,000 on). Defaults: reference = the first
//! 500 rows, windows of 500, alpha 0.01, PSI floor 0.25, shift floor 0.5.

use std::path::{Path, PathBuf};

use edgeloop::monitor::data_drift::{
    compare_dependent, effective_sample_size, lag1_autocorrelation, DependentDriftConfig,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/drift_windows")
        .join(name)
}

fn column(name: &str) -> Vec<f32> {
    let mut r = csv::Reader::from_path(fixture(name)).unwrap();
    r.records()
        .map(|rec| rec.unwrap()[1].parse().unwrap())
        .collect()
}

/// `edgeloop drift --json` on a fixture: the start rows of the flagged
/// windows, and the number of windows.
fn flagged(name: &str) -> (Vec<u64>, u64) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["drift", "--json", "--features", "x", "--file"])
        .arg(fixture(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let windows = v["windows"].as_array().unwrap();
    let starts: Vec<u64> = windows
        .iter()
        .filter(|w| w["drift"] == true)
        .map(|w| w["start"].as_u64().unwrap())
        .collect();
    assert_eq!(v["flagged"].as_u64().unwrap(), starts.len() as u64);
    assert_eq!(v["total"].as_u64().unwrap(), windows.len() as u64);
    (starts, windows.len() as u64)
}

#[test]
fn lag1_autocorrelation_equals_numpys() {
    let reference: Value =
        serde_json::from_slice(&std::fs::read(fixture("ar1.json")).unwrap()).unwrap();
    for (name, rho) in reference["lag1_first_500"].as_object().unwrap() {
        let x = column(&format!("{name}.csv"));
        let ours = lag1_autocorrelation(&x[..500]);
        let numpy = rho.as_f64().unwrap();
        assert!(
            (ours - numpy).abs() < 1e-12,
            "{name}: ours {ours}, numpy {numpy}"
        );
    }
    // Wilks' n(1 - rho)/(1 + rho).
    assert!((effective_sample_size(500, 0.9) - 500.0 * 0.1 / 1.9).abs() < 1e-9);
    assert_eq!(effective_sample_size(500, -0.3), 500.0);
}

#[test]
fn identical_windows_never_drift() {
    let x = column("ar1_0.9.csv");
    let rows: Vec<Vec<f32>> = x[..500].iter().map(|&v| vec![v]).collect();
    let d = compare_dependent(
        &["x".into()],
        &rows,
        &rows,
        &DependentDriftConfig::default(),
    );
    assert!(!d[0].drifted);
    assert_eq!(
        (d[0].psi, d[0].shift, d[0].ks_statistic),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    assert_eq!(d[0].mean_p_value_effective, Some(1.0));
}

#[test]
fn no_change_stays_within_the_false_alarm_bound_and_a_shift_is_flagged() {
    // 19 windows after the reference; the documented bound is 5 %: at most
    // 1 window of 19 flagged on a stream that does not change.
    for phi in ["0.0", "0.5", "0.9"] {
        let (starts, total) = flagged(&format!("ar1_{phi}.csv"));
        assert_eq!(total, 19);
        assert!(
            starts.len() <= 1,
            "phi {phi}: no change, flagged {starts:?}"
        );
    }
    // +1 standard deviation from row 5,000: every window after it flagged
    // for phi <= 0.5; at phi 0.9 (about 26 effective readings per window)
    // at least 8 of the 10.
    for (phi, least) in [("0.0", 10), ("0.5", 10), ("0.9", 8)] {
        let (starts, _) = flagged(&format!("ar1_{phi}_shift.csv"));
        let after = starts.iter().filter(|&&s| s >= 5000).count();
        let before = starts.len() - after;
        assert!(
            after >= least,
            "phi {phi}: {after} of 10 shifted windows flagged: {starts:?}"
        );
        assert!(
            before <= 1,
            "phi {phi}: flagged before the shift: {starts:?}"
        );
    }
}
