//! The concept-drift detectors' parameters as configuration keys (issue 18):
//! `[pipelines.drift.adwin]`, `.ddm`, `.page_hinkley` and `standardize`,
//! loaded from a file, validated, and the detector the daemon builds from
//! them (`DriftConfig::new_detector`, what the learner watches the errors
//! with) alarming where River does with the same parameters
//! (`tests/fixtures/drift/gen_drift.py`: River 0.26's ADWIN with its default
//! clock 32 and with clock 1 on the same streams).

use std::path::Path;

use edgeloop::config::Config;
use edgeloop::monitor::detectors::{DriftDetector, PageHinkley, PageHinkleyConfig, Standardized};
use serde_json::Value;

const PIPELINE: &str = "[[pipelines]]\nname='occ'\ntopics=['s/+/o']\nfeatures=['T']\nlabel='y'\n";

fn load(extra: &str) -> Result<Config, String> {
    let dir = std::env::temp_dir().join(format!(
        "edgeloop-drift-config-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edgeloop.toml");
    std::fs::write(&file, format!("{PIPELINE}{extra}")).unwrap();
    let cfg = Config::load_with_env(Some(&file), std::iter::empty()).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    cfg
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drift/drift.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// River's alarms for `detector` on `stream` with ADWIN clock `clock`.
fn river_adwin(fx: &Value, stream: &str, clock: u64) -> (Vec<f64>, Vec<u64>) {
    let case = fx["detector_cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["detector"] == "adwin" && c["stream"] == stream && c["params"]["clock"] == clock
        })
        .unwrap_or_else(|| panic!("no adwin case for {stream}, clock {clock}"));
    let values = fx["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stream)
        .unwrap()["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let alarms = case["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect();
    (values, alarms)
}

fn alarms(d: &mut dyn DriftDetector, values: &[f64]) -> Vec<u64> {
    values
        .iter()
        .enumerate()
        .filter(|&(_, &x)| d.update(x))
        .map(|(i, _)| i as u64)
        .collect()
}

#[test]
fn a_configured_adwin_clock_moves_the_alarm_to_rivers_index() {
    let fx = fixture();
    let default = load("").unwrap();
    let clock1 = load("[pipelines.drift.adwin]\nclock = 1\n").unwrap();
    assert_eq!(clock1.pipelines[0].drift.adwin.clock, 1);
    assert_eq!(default.pipelines[0].drift.adwin.clock, 32);
    let mut moved = 0;
    for stream in [
        "abrupt",
        "gradual",
        "two_changes",
        "gaussian_shift",
        "no_change",
    ] {
        let (values, river32) = river_adwin(&fx, stream, 32);
        let (_, river1) = river_adwin(&fx, stream, 1);
        let ours32 = alarms(&mut *default.pipelines[0].drift.new_detector(), &values);
        let ours1 = alarms(&mut *clock1.pipelines[0].drift.new_detector(), &values);
        assert_eq!(ours32, river32, "{stream}, clock 32");
        assert_eq!(ours1, river1, "{stream}, clock 1");
        moved += usize::from(river1 != river32);
    }
    // abrupt: 1055 with River's clock, 1027 checking every value.
    assert!(
        moved >= 4,
        "the clock changed the alarms on {moved} streams"
    );
}

#[test]
fn detector_parameters_are_validated_naming_the_key() {
    for (toml, key) in [
        ("[pipelines.drift.adwin]\nclock = 0\n", "drift.adwin.clock"),
        (
            "[pipelines.drift.adwin]\ndelta = 1.5\n",
            "drift.adwin.delta",
        ),
        (
            "[pipelines.drift.ddm]\nwarning_threshold = 4.0\n",
            "drift.ddm.warning_threshold",
        ),
        (
            "[pipelines.drift.page_hinkley]\nthreshold = 0.0\n",
            "drift.page_hinkley.threshold",
        ),
        (
            "[pipelines.drift.page_hinkley]\nalpha = 1.5\n",
            "drift.page_hinkley.alpha",
        ),
        (
            "[pipelines.drift]\ndetector = 'ddm'\nstandardize = true\n",
            "drift.standardize",
        ),
        ("[pipelines.drift.page_hinkley]\nlambda = 3.0\n", "lambda"),
        (
            "[pipelines.drift]\nrange_floor = 1.5\n",
            "drift.range_floor",
        ),
        (
            "[pipelines.drift]\nrange_floor = 0.0\n",
            "drift.range_floor",
        ),
        ("[pipelines.drift]\ndependence = 'lag2'\n", "dependence"),
    ] {
        let err = load(toml)
            .err()
            .unwrap_or_else(|| panic!("{toml} accepted"));
        assert!(err.contains(key), "{toml}: {err}");
    }
    let ok = load(
        "[pipelines.drift]\ndetector = 'page_hinkley'\nstandardize = true\n\
         [pipelines.drift.page_hinkley]\nthreshold = 8.0\nmode = 'up'\nmin_instances = 10\n",
    )
    .unwrap();
    let d = &ok.pipelines[0].drift;
    assert_eq!(
        (d.page_hinkley.threshold, d.page_hinkley.min_instances),
        (8.0, 10)
    );
    // The data-drift rule's defaults: no range rule, the larger of the two
    // autocorrelation times; both settable.
    assert_eq!(d.range_floor, None);
    assert_eq!(
        d.dependence,
        edgeloop::monitor::data_drift::Dependence::Larger
    );
    let set = load("[pipelines.drift]\nrange_floor = 0.25\ndependence = 'lag1'\n").unwrap();
    let set = &set.pipelines[0].drift;
    assert_eq!(set.range_floor, Some(0.25));
    assert_eq!(
        set.data_drift().dependence,
        edgeloop::monitor::data_drift::Dependence::Lag1
    );
    assert!(d.standardize);
}

#[test]
fn standardized_page_hinkley_is_page_hinkley_on_earlier_z_scores() {
    // Uniform noise of ±100 raw units (xorshift64), then a level shift of
    // 300 from row 300. Page-Hinkley's default threshold of 50 in raw units
    // fires on the noise before the shift; on z-scores (50 standard
    // deviations) only after it.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f64> = (0..600)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 * 200.0 - 100.0;
            noise + if i >= 300 { 300.0 } else { 0.0 }
        })
        .collect();
    let ph = PageHinkleyConfig::default();
    let cfg = load("[pipelines.drift]\ndetector = 'page_hinkley'\nstandardize = true\n").unwrap();
    let ours = alarms(&mut *cfg.pipelines[0].drift.new_detector(), &values);
    // The same detector fed the z-scores computed here, value by value.
    let mut plain = PageHinkley::new(ph);
    let mut expected = Vec::new();
    for (i, &x) in values.iter().enumerate() {
        let before = &values[..i];
        let z = if i < 2 {
            0.0
        } else {
            let m = before.iter().sum::<f64>() / i as f64;
            let sd =
                (before.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (i as f64 - 1.0)).sqrt();
            if sd > 0.0 {
                (x - m) / sd
            } else {
                0.0
            }
        };
        if plain.update(z) {
            expected.push(i as u64);
        }
    }
    assert_eq!(ours, expected);
    assert!(ours.first().is_some_and(|&a| a >= 300), "{ours:?}");
    let raw = alarms(&mut PageHinkley::new(ph), &values);
    assert!(raw.first().is_some_and(|&a| a < 300), "{raw:?}");
    let mut s = Standardized::new(Box::new(PageHinkley::new(ph)));
    assert_eq!(alarms(&mut s, &values), expected);
}

/// `edgeloop detect --param` goes through the daemon's checks: ADWIN's
/// `delta` must be in (0, 1) (before, `delta=5` ran and printed alarms).
#[test]
fn detect_refuses_the_parameters_the_daemon_refuses() {
    let run = |detector: &str, param: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["detect", "--file"])
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/anomaly/nab_ambient_temperature_system_failure.csv"),
            )
            .args([
                "--column",
                "value",
                "--detector",
                detector,
                "--param",
                param,
            ])
            .output()
            .unwrap()
    };
    for (detector, param, key) in [
        ("adwin", "delta=5", "`adwin.delta` must be in (0, 1)"),
        ("adwin", "clock=0", "`adwin.clock`"),
        ("page_hinkley", "threshold=-1", "`page_hinkley.threshold`"),
        ("ddm", "warning_threshold=9", "`ddm.warning_threshold`"),
    ] {
        let out = run(detector, param);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{detector} {param}");
        assert!(err.contains(key), "{detector} {param}: {err}");
    }
    assert!(run("adwin", "delta=0.01").status.success());
}

#[test]
fn detect_refuses_a_value_that_is_not_finite_naming_its_row() {
    // River's ADWIN (clock 32) on the fixture's abrupt stream; the same
    // values through `edgeloop detect` give its alarms, and with one cell
    // NaN or inf (which kept every later alarm away: "0 alarms") the
    // command stops naming the row instead.
    let fx = fixture();
    let (values, river) = river_adwin(&fx, "abrupt", 32);
    assert!(!river.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let run = |cells: &[String]| {
        let file = dir.path().join("errors.csv");
        std::fs::write(&file, format!("e\n{}\n", cells.join("\n"))).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["detect", "--column", "e", "--detector", "adwin", "--json"])
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let mut cells: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let out = run(&cells);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<u64> = serde_json::from_value(v["alarms"].clone()).unwrap();
    assert_eq!(ours, river);
    for bad in ["NaN", "inf", "-inf"] {
        cells[100] = bad.to_string();
        let out = run(&cells);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{bad:?} ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains(&format!("row 101: `{bad}` is not a finite number")),
            "{bad:?}: {err}"
        );
    }
}
