//! `edgeloop drift` (issue 18): data drift of windows against a reference
//! under serial dependence (`monitor::data_drift::compare_dependent`), on
//! seeded AR(1) streams from `tests/fixtures/drift_windows/gen_ar1.py`
//! (unit marginal variance; 10,000 rows; the `_shift` copies gain +1
//! standard deviation from row 5,000 on). Defaults: reference = the first
//! 2,000 rows, windows of 500 every 250, alpha 1e-4, PSI floor 1.2, shift
//! floor 0.75, range floor 0.25 (chosen in `benches/drift_false_alarms.py`;
//! the same rule as the daemon's drift endpoint, `tests/loop_e2e.rs`). The seasonal
//! reference (`--timestamp`) against `nab_seasonal.json` (Python's calendar,
//! scipy's KS) on NAB's ambient-temperature file.

use std::path::{Path, PathBuf};

use edgeloop::monitor::data_drift::{
    ar1_time, autocorrelation_time, compare_dependent, effective_sample_size, lag1_autocorrelation,
    season_bucket, seasonal_reference, DependentDriftConfig, Season,
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
    let v = drift_json(&fixture(name), &["--features", "x"]);
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

/// `edgeloop drift --json --file FILE ARGS…`.
fn drift_json(file: &Path, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["drift", "--json", "--file"])
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    assert!((effective_sample_size(500, ar1_time(0.9)) - 500.0 * 0.1 / 1.9).abs() < 1e-9);
    assert_eq!(effective_sample_size(500, ar1_time(-0.3)), 500.0);
    // A unit root: at least 2; an anticorrelated series: at most n.
    assert_eq!(effective_sample_size(500, ar1_time(1.0)), 2.0);
    assert_eq!(effective_sample_size(500, 0.5), 500.0);
}

#[test]
fn autocorrelation_time_equals_numpys_initial_positive_sequence() {
    // gen_ar1.py: Geyer's initial monotone positive sequence over numpy's
    // FFT autocovariances, lags up to 1,000.
    let reference: Value =
        serde_json::from_slice(&std::fs::read(fixture("ar1.json")).unwrap()).unwrap();
    let taus = reference["autocorrelation_time"].as_object().unwrap();
    assert_eq!(taus.len(), 19);
    for (key, tau) in taus {
        let (name, rows) = key.split_once("[:").unwrap();
        let rows: usize = rows.trim_end_matches(']').parse().unwrap();
        let x = if name == "nab_ambient_temperature" {
            let text = std::fs::read_to_string(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/anomaly/nab_ambient_temperature_system_failure.csv"),
            )
            .unwrap();
            text.lines()
                .skip(1)
                .map(|l| l.split(',').nth(1).unwrap().parse::<f32>().unwrap())
                .collect()
        } else {
            column(&format!("{name}.csv"))
        };
        let ours = autocorrelation_time(&x[..rows]);
        let numpy = tau.as_f64().unwrap();
        assert!(
            (ours - numpy).abs() < 1e-9 * numpy,
            "{key}: ours {ours}, numpy {numpy}"
        );
    }
    // The slow wander under fast noise: its lag-1 autocorrelation reads
    // almost independent readings, its autocorrelation time about 22 to a
    // reading; the default rule takes the larger.
    let wander = column("wander.csv");
    let rho = lag1_autocorrelation(&wander[..2000]);
    let tau = taus["wander[:2000]"].as_f64().unwrap();
    assert!((1.0 + rho) / (1.0 - rho) < 1.5 && tau > 20.0, "{rho} {tau}");
    let file = fixture("wander.csv");
    let v = drift_json(&file, &["--features", "x"]);
    let first = &v["windows"][0]["features"]["x"];
    assert!((first["tau_reference"].as_f64().unwrap() - tau).abs() < 1e-9 * tau);
    let v = drift_json(&file, &["--features", "x", "--dependence", "lag1"]);
    let lag1 = v["windows"][0]["features"]["x"]["tau_reference"]
        .as_f64()
        .unwrap();
    assert!((lag1 - (1.0 + rho) / (1.0 - rho)).abs() < 1e-9, "{lag1}");
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
    assert_eq!(d[0].ks_p_value_effective, Some(1.0));
    assert_eq!(d[0].outside_range, Some(0.0));
    // Every way to drift on its own, at its most sensitive setting: still
    // none on identical windows.
    for cfg in [
        DependentDriftConfig {
            alpha: 0.999_999,
            psi_floor: 0.0,
            shift_floor: 0.0,
            range_floor: None,
            ..DependentDriftConfig::default()
        },
        DependentDriftConfig {
            alpha: 1e-300,
            range_floor: Some(f64::MIN_POSITIVE),
            ..DependentDriftConfig::default()
        },
    ] {
        assert!(!compare_dependent(&["x".into()], &rows, &rows, &cfg)[0].drifted);
    }
}

#[test]
fn no_change_stays_within_the_false_alarm_bound_and_a_shift_is_flagged() {
    // 31 windows after the reference; the documented bound is 5 %: at most
    // 1 window of 31 flagged on a stream that does not change (φ up to 0.98).
    for phi in ["0.0", "0.5", "0.9", "0.98"] {
        let (starts, total) = flagged(&format!("ar1_{phi}.csv"));
        assert_eq!(total, 31);
        assert!(
            starts.len() <= 1,
            "phi {phi}: no change, flagged {starts:?}"
        );
    }
    // +1 standard deviation from row 5,000: the 19 windows starting there
    // or later all flagged for phi <= 0.5; at phi 0.9 (about 26 effective
    // readings per window) at least 16 of the 19.
    for (phi, least) in [("0.0", 19), ("0.5", 19), ("0.9", 16)] {
        let (starts, _) = flagged(&format!("ar1_{phi}_shift.csv"));
        let after = starts.iter().filter(|&&s| s >= 5000).count();
        let before = starts.iter().filter(|&&s| s + 500 <= 5000).count();
        assert!(
            after >= least,
            "phi {phi}: {after} of 19 shifted windows flagged: {starts:?}"
        );
        assert!(
            before <= 1,
            "phi {phi}: flagged before the shift: {starts:?}"
        );
    }
}

#[test]
fn season_buckets_follow_the_calendar() {
    // 2015-02-07 13:00 UTC, a Saturday (Python's datetime).
    let sat = 1_423_314_000_000;
    assert_eq!(season_bucket(sat, Season::HourOfDay), 13);
    assert_eq!(season_bucket(sat, Season::HourAndWeekend), 37);
    assert_eq!(season_bucket(sat, Season::HourOfWeek), 5 * 24 + 13);
    assert_eq!(season_bucket(sat, Season::None), 0);
    // 1969-12-29 05:00 UTC, a Monday before the epoch.
    assert_eq!(season_bucket(-241_200_000, Season::HourOfWeek), 5);
    // The rule: a bucket below min_count takes its hour of day; an hour
    // below min_count too, the whole reference.
    let h = 3_600_000i64;
    let reference: Vec<i64> = (0..24 * 7).map(|i| sat + i * h).collect();
    // Saturday 13:00 and 14:00 of the next week: weekend buckets hold 2
    // readings each (Saturday, Sunday); with min_count 2 those, with 3 the
    // hours 13 and 14 of every day.
    let window = [sat + 168 * h, sat + 169 * h];
    let weekend: Vec<i64> = seasonal_reference(&reference, &window, Season::HourAndWeekend, 2)
        .into_iter()
        .map(|i| (reference[i] - sat) / h)
        .collect();
    assert_eq!(weekend, [0, 1, 24, 25]);
    let hours = seasonal_reference(&reference, &window, Season::HourAndWeekend, 3);
    assert_eq!(hours.len(), 14);
    assert_eq!(
        seasonal_reference(&reference, &window, Season::HourAndWeekend, 8).len(),
        168
    );
    assert_eq!(
        seasonal_reference(&reference, &window, Season::None, 1).len(),
        168
    );
}

#[test]
fn identical_reference_and_window_never_drift_in_any_season() {
    // Rows 0..500 of the phi 0.9 stream, hourly from 2015-02-02 00:00, then
    // the same 500 values four weeks later (the same hours of the week):
    // reference = window = 500 rows.
    let x = column("ar1_0.9.csv");
    let dir = std::env::temp_dir().join(format!("edgeloop-drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("twice.csv");
    let mut text = String::from("time,x\n");
    for copy in 0..2i64 {
        for (i, v) in x[..500].iter().enumerate() {
            let t = 1_422_835_200 + (copy * 28 * 24 + i as i64) * 3600;
            text.push_str(&format!("{t},{v}\n"));
        }
    }
    std::fs::write(&file, text).unwrap();
    for season in ["none", "hour_of_day", "hour_and_weekend", "hour_of_week"] {
        let v = drift_json(
            &file,
            &[
                "--features",
                "x",
                "--reference",
                "500",
                "--window",
                "500",
                "--timestamp",
                "time",
                "--season",
                season,
            ],
        );
        assert_eq!(
            (v["flagged"].as_u64(), v["total"].as_u64()),
            (Some(0), Some(1))
        );
        let f = &v["windows"][0]["features"]["x"];
        assert_eq!(v["windows"][0]["reference_rows"], 500, "{season}");
        for k in ["psi", "shift", "ks_statistic"] {
            assert_eq!(f[k], 0.0, "{season}: {k}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seasonal_reference_on_nab_equals_pythons_calendar_and_scipys_ks() {
    let want: Value =
        serde_json::from_slice(&std::fs::read(fixture("nab_seasonal.json")).unwrap()).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anomaly/nab_ambient_temperature_system_failure.csv");
    let v = drift_json(
        &file,
        &[
            "--features",
            "value",
            "--timestamp",
            "timestamp",
            "--reference",
            "2000",
            "--window",
            "24",
            "--step",
            "24",
            "--min-bucket",
            "30",
        ],
    );
    let (ours, theirs) = (
        v["windows"].as_array().unwrap(),
        want["windows"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(v["total"].as_u64().unwrap() as usize, theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o["start"], t["start"]);
        assert_eq!(o["end"].as_u64(), o["start"].as_u64().map(|s| s + 24));
        assert_eq!(
            o["reference_rows"], t["reference_rows"],
            "window {}",
            t["start"]
        );
        let d = o["features"]["value"]["ks_statistic"].as_f64().unwrap();
        assert!(
            (d - t["ks_statistic"].as_f64().unwrap()).abs() < 1e-12,
            "window {}: D {d} vs scipy {}",
            t["start"],
            t["ks_statistic"]
        );
    }
    // The fallback happened (weekend hours hold fewer than 30 of the 2,000
    // reference readings) and the flags are consistent.
    assert!(theirs.iter().any(|t| t["reference_rows"] != 2000));
    let flagged = ours.iter().filter(|w| w["drift"] == true).count();
    assert_eq!(v["flagged"].as_u64().unwrap() as usize, flagged);
}

#[test]
fn a_column_that_leaves_a_constant_reference_drifts() {
    // The reference is one value (a stuck sensor, a switch left off): no
    // standard deviation, and every PSI bin edge equals that value. A window
    // of 6 after a reference of 5 is disjoint from it: KS statistic 1 by
    // definition (sup |F_ref − F_cur| = 1); a window that stays at 5 is the
    // reference itself.
    let cfg = DependentDriftConfig::default();
    let column = |v: f32, n: usize| vec![vec![v]; n];
    let up = &compare_dependent(&["x".into()], &column(5.0, 2000), &column(6.0, 500), &cfg)[0];
    assert_eq!(up.ks_statistic, Some(1.0));
    assert_eq!(up.outside_range, Some(1.0));
    assert!(up.drifted, "{up:?}");
    let down = &compare_dependent(&["x".into()], &column(5.0, 2000), &column(4.0, 500), &cfg)[0];
    assert!(down.drifted, "{down:?}");
    let same = &compare_dependent(&["x".into()], &column(5.0, 2000), &column(5.0, 500), &cfg)[0];
    assert_eq!(same.ks_statistic, Some(0.0));
    assert!(!same.drifted, "{same:?}");
    // Spread appearing above the stuck value, in no order (5 + a
    // permutation of k/500: no serial dependence to discount).
    let spread: Vec<Vec<f32>> = (0..500)
        .map(|k| vec![5.0 + ((k * 7919) % 500) as f32 / 500.0])
        .collect();
    let d = &compare_dependent(&["x".into()], &column(5.0, 2000), &spread, &cfg)[0];
    assert!(d.drifted, "{d:?}");
}
