//! `monitor::detectors` (ADWIN, DDM, Page-Hinkley) against River, and
//! `monitor::data_drift` (PSI, two-sample Kolmogorov–Smirnov) against numpy and scipy.
//!
//! Expected values come from `tests/fixtures/drift/drift.json`, written by
//! `tests/fixtures/drift/gen_drift.py` (River `drift.ADWIN`, `drift.binary.DDM`,
//! `drift.PageHinkley`; numpy `quantile`/`searchsorted` for PSI; scipy `stats.ks_2samp` and
//! `special.kolmogorov`; the versions are in the file). Rerun the script to regenerate them;
//! never edit the JSON by hand.
//!
//! Detectors must raise their alarms at exactly River's indices (an alarm at index `i` means
//! `drift_detected` is True right after `update(x_i)`); the configuration of every run is
//! built from the parameters River recorded.

use edgeloop::monitor::data_drift::{ks_2samp, psi};
use edgeloop::monitor::detectors::{
    Adwin, AdwinConfig, Ddm, DdmConfig, DriftDetector, PageHinkley, PageHinkleyConfig,
    PageHinkleyMode,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// PSI: relative tolerance (summation order differs from numpy's pairwise sum).
const PSI_REL_TOL: f64 = 1e-9;
/// KS statistic: absolute tolerance.
const KS_STAT_TOL: f64 = 1e-12;
/// KS asymptotic p-value: absolute tolerance.
const KS_P_TOL: f64 = 1e-9;

/// Streams the fixture must hold, with their kind and length, so a truncated file fails.
const REQUIRED_STREAMS: &[(&str, &str, usize)] = &[
    ("abrupt", "binary", 2000),
    ("gradual", "binary", 3000),
    ("no_change", "binary", 3000),
    ("constant_zero", "binary", 2000),
    ("constant_one", "binary", 1000),
    ("two_changes", "binary", 3000),
    ("gaussian_shift", "real", 2000),
    ("gaussian_no_change", "real", 3000),
    ("constant_value", "real", 2000),
];

/// Detector runs every stream must have: (detector, River defaults?, binary streams only?).
const REQUIRED_RUNS: &[(&str, bool, bool)] = &[
    ("adwin", true, false),
    ("adwin", false, false), // clock = 1
    ("ddm", true, true),
    ("page_hinkley", true, false),
    ("page_hinkley", false, false), // threshold = 10, mode "up"
];

/// Data-drift cases the fixture must hold.
const REQUIRED_DATA_CASES: &[&str] = &[
    "identical",
    "same_distribution",
    "shifted_mean",
    "scaled_variance",
    "different_sizes",
    "with_nan",
    "constant_reference",
    "integer_ties",
    "quantile_on_sample",
    "current_all_nan",
];

#[derive(Deserialize)]
struct Fixture {
    river_version: String,
    scipy_version: String,
    numpy_version: String,
    streams: Vec<Stream>,
    detector_cases: Vec<DetectorCase>,
    data_cases: Vec<DataCase>,
}

#[derive(Deserialize)]
struct Stream {
    name: String,
    kind: String,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct DetectorCase {
    stream: String,
    detector: String,
    river_defaults: bool,
    /// Every parameter of the River object (`_get_params()`).
    params: Map<String, Value>,
    /// Indices `i` where River's `drift_detected` is True after `update(x_i)`.
    alarms: Vec<usize>,
}

#[derive(Deserialize)]
struct DataCase {
    name: String,
    bins: usize,
    /// float32 values written as f64; `null` = NaN.
    reference: Vec<Option<f64>>,
    current: Vec<Option<f64>>,
    expected: DataExpected,
}

/// numpy/scipy values; `null` when a side is empty after dropping NaN (the contract: `None`).
#[derive(Deserialize)]
struct DataExpected {
    n_reference: usize,
    n_current: usize,
    psi: Option<f64>,
    ks_statistic: Option<f64>,
    ks_p_value: Option<f64>,
}

fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/drift/drift.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// The parameter names River records for each detector; any other key fails the test.
fn param_names(detector: &str) -> &'static [&'static str] {
    match detector {
        "adwin" => &[
            "clock",
            "delta",
            "grace_period",
            "max_buckets",
            "min_window_length",
        ],
        "ddm" => &["drift_threshold", "warm_start", "warning_threshold"],
        "page_hinkley" => &["alpha", "delta", "min_instances", "mode", "threshold"],
        other => panic!("unknown detector {other:?} in the fixture"),
    }
}

struct Params<'a> {
    what: String,
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    fn new(case: &'a DetectorCase) -> Self {
        let what = format!("{} / {}", case.stream, case.detector);
        let mut keys: Vec<&str> = case.params.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            param_names(&case.detector),
            "{what}: River's parameter names"
        );
        Params {
            what,
            map: &case.params,
        }
    }

    fn f64(&self, key: &str) -> f64 {
        self.map[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: param {key} is not a number", self.what))
    }

    fn u64(&self, key: &str) -> u64 {
        self.map[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: param {key} is not an unsigned integer", self.what))
    }

    fn u32(&self, key: &str) -> u32 {
        u32::try_from(self.u64(key)).unwrap_or_else(|e| panic!("{}: param {key}: {e}", self.what))
    }

    fn str(&self, key: &str) -> &str {
        self.map[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: param {key} is not a string", self.what))
    }
}

fn adwin_config(p: &Params) -> AdwinConfig {
    AdwinConfig {
        delta: p.f64("delta"),
        clock: p.u32("clock"),
        max_buckets: usize::try_from(p.u64("max_buckets")).expect("max_buckets fits usize"),
        min_window_length: p.u32("min_window_length"),
        grace_period: p.u32("grace_period"),
    }
}

fn ddm_config(p: &Params) -> DdmConfig {
    DdmConfig {
        warm_start: p.u32("warm_start"),
        warning_threshold: p.f64("warning_threshold"),
        drift_threshold: p.f64("drift_threshold"),
    }
}

fn page_hinkley_config(p: &Params) -> PageHinkleyConfig {
    let mode = match p.str("mode") {
        "up" => PageHinkleyMode::Up,
        "down" => PageHinkleyMode::Down,
        "both" => PageHinkleyMode::Both,
        other => panic!("{}: unknown Page-Hinkley mode {other:?}", p.what),
    };
    PageHinkleyConfig {
        min_instances: p.u32("min_instances"),
        delta: p.f64("delta"),
        threshold: p.f64("threshold"),
        alpha: p.f64("alpha"),
        mode,
    }
}

fn build(case: &DetectorCase) -> Box<dyn DriftDetector> {
    let p = Params::new(case);
    match case.detector.as_str() {
        "adwin" => Box::new(Adwin::new(adwin_config(&p))),
        "ddm" => Box::new(Ddm::new(ddm_config(&p))),
        "page_hinkley" => Box::new(PageHinkley::new(page_hinkley_config(&p))),
        other => panic!("unknown detector {other:?}"),
    }
}

fn params_text(case: &DetectorCase) -> String {
    case.params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stream<'a>(fx: &'a Fixture, name: &str) -> &'a Stream {
    fx.streams
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("stream {name:?} missing from the fixture"))
}

#[test]
fn fixture_holds_every_case() {
    let fx = load();
    eprintln!(
        "drift.json: river {}, scipy {}, numpy {}",
        fx.river_version, fx.scipy_version, fx.numpy_version
    );
    for &(name, kind, len) in REQUIRED_STREAMS {
        let s = stream(&fx, name);
        assert_eq!(s.kind, kind, "stream {name}: kind");
        assert_eq!(s.values.len(), len, "stream {name}: length");
        if kind == "binary" {
            assert!(
                s.values.iter().all(|&v| v == 0.0 || v == 1.0),
                "stream {name}: binary values are 0.0 / 1.0"
            );
        }
        for &(detector, defaults, binary_only) in REQUIRED_RUNS {
            let n = fx
                .detector_cases
                .iter()
                .filter(|c| {
                    c.stream == name && c.detector == detector && c.river_defaults == defaults
                })
                .count();
            let want = usize::from(!binary_only || kind == "binary");
            assert_eq!(
                n, want,
                "stream {name}: runs of {detector} (River defaults: {defaults})"
            );
        }
    }
    assert_eq!(fx.streams.len(), REQUIRED_STREAMS.len(), "streams");
    for &name in REQUIRED_DATA_CASES {
        assert_eq!(
            fx.data_cases.iter().filter(|c| c.name == name).count(),
            1,
            "data case {name:?} missing or duplicated"
        );
    }
    assert_eq!(fx.data_cases.len(), REQUIRED_DATA_CASES.len(), "data cases");
    let multi = fx
        .detector_cases
        .iter()
        .filter(|c| c.alarms.len() >= 2)
        .count();
    assert!(multi >= 5, "only {multi} detector runs with several alarms");
}

/// Our `Default`s are River's defaults, as recorded by the fixture.
#[test]
fn defaults_are_rivers() {
    let fx = load();
    for case in fx.detector_cases.iter().filter(|c| c.river_defaults) {
        let p = Params::new(case);
        match case.detector.as_str() {
            "adwin" => {
                let (r, d) = (adwin_config(&p), AdwinConfig::default());
                assert_eq!(r.delta, d.delta, "AdwinConfig::default().delta");
                assert_eq!(r.clock, d.clock, "AdwinConfig::default().clock");
                assert_eq!(
                    r.max_buckets, d.max_buckets,
                    "AdwinConfig::default().max_buckets"
                );
                assert_eq!(
                    r.min_window_length, d.min_window_length,
                    "AdwinConfig::default().min_window_length"
                );
                assert_eq!(
                    r.grace_period, d.grace_period,
                    "AdwinConfig::default().grace_period"
                );
            }
            "ddm" => {
                let (r, d) = (ddm_config(&p), DdmConfig::default());
                assert_eq!(
                    r.warm_start, d.warm_start,
                    "DdmConfig::default().warm_start"
                );
                assert_eq!(
                    r.warning_threshold, d.warning_threshold,
                    "DdmConfig::default().warning_threshold"
                );
                assert_eq!(
                    r.drift_threshold, d.drift_threshold,
                    "DdmConfig::default().drift_threshold"
                );
            }
            "page_hinkley" => {
                let (r, d) = (page_hinkley_config(&p), PageHinkleyConfig::default());
                assert_eq!(
                    r.min_instances, d.min_instances,
                    "PageHinkleyConfig::default().min_instances"
                );
                assert_eq!(r.delta, d.delta, "PageHinkleyConfig::default().delta");
                assert_eq!(
                    r.threshold, d.threshold,
                    "PageHinkleyConfig::default().threshold"
                );
                assert_eq!(r.alpha, d.alpha, "PageHinkleyConfig::default().alpha");
                assert!(
                    matches!(d.mode, PageHinkleyMode::Both),
                    "PageHinkleyConfig::default().mode = {:?}, River: both",
                    d.mode
                );
            }
            other => panic!("unknown detector {other:?}"),
        }
    }
}

#[test]
fn detectors_match_river() {
    let fx = load();
    let mut failures = Vec::new();
    for case in &fx.detector_cases {
        let values = &stream(&fx, &case.stream).values;
        let mut det = build(case);
        let got: Vec<usize> = values
            .iter()
            .enumerate()
            .filter_map(|(i, &x)| det.update(x).then_some(i))
            .collect();
        let label = format!(
            "{} / {} ({})",
            case.stream,
            case.detector,
            params_text(case)
        );
        if got == case.alarms {
            eprintln!("ok   {label}: {} alarms {:?}", got.len(), case.alarms);
        } else {
            // First stream index where the two alarm sets differ.
            let first = got
                .iter()
                .zip(&case.alarms)
                .find(|(g, w)| g != w)
                .map(|(g, w)| *g.min(w))
                .or_else(|| got.get(case.alarms.len()).copied())
                .or_else(|| case.alarms.get(got.len()).copied())
                .expect("alarm lists differ");
            let line = format!(
                "{label}: first mismatch at stream index {first} (x = {:?}); ours {got:?}, River {:?}",
                values[first], case.alarms
            );
            eprintln!("FAIL {line}");
            failures.push(line);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} detector runs differ from River {}:\n{}",
        failures.len(),
        fx.detector_cases.len(),
        fx.river_version,
        failures.join("\n")
    );
}

/// The stored values back to the float32 samples (`None` = NaN).
///
/// The JSON holds `float(x)` of each float32 sample, up to 17 significant digits, and
/// serde_json's default (not `float_roundtrip`) parser may land one f64 ulp away from it;
/// rounding to f32 recovers the sample exactly, since an f32 is ~2^29 f64 ulps wide.
fn to_f32(case: &str, side: &str, values: &[Option<f64>]) -> Vec<f32> {
    values
        .iter()
        .map(|v| match *v {
            None => f32::NAN,
            Some(x) => {
                let f = x as f32;
                assert!(
                    (f64::from(f) - x).abs() <= x.abs() * f64::EPSILON,
                    "{case}: {side} value {x} is not a float32"
                );
                f
            }
        })
        .collect()
}

/// `|got − want| ≤ tol`; false for NaN.
fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

#[test]
fn data_drift_matches_numpy_and_scipy() {
    let fx = load();
    let mut failures = Vec::new();
    for case in &fx.data_cases {
        let name = case.name.as_str();
        let reference = to_f32(name, "reference", &case.reference);
        let current = to_f32(name, "current", &case.current);
        let e = &case.expected;
        assert_eq!(
            reference.iter().filter(|v| !v.is_nan()).count(),
            e.n_reference,
            "{name}: non-NaN reference values"
        );
        assert_eq!(
            current.iter().filter(|v| !v.is_nan()).count(),
            e.n_current,
            "{name}: non-NaN current values"
        );

        let got_psi = psi(&reference, &current, case.bins);
        let got_ks = ks_2samp(&reference, &current);
        let mut bad = Vec::new();
        match (got_psi, e.psi) {
            (Some(g), Some(w)) => {
                let ok = if w == 0.0 {
                    g == 0.0
                } else {
                    (g - w).abs() <= PSI_REL_TOL * w.abs()
                };
                if !ok {
                    bad.push(format!(
                        "psi = {g:?}, numpy {w:?} (rel {:.3e})",
                        (g - w).abs() / w.abs()
                    ));
                }
            }
            (None, None) => {}
            (g, w) => bad.push(format!("psi = {g:?}, expected {w:?} (None ⇔ null)")),
        }
        match (&got_ks, e.ks_statistic, e.ks_p_value) {
            (Some(g), Some(wd), Some(wp)) => {
                if !within(g.statistic, wd, KS_STAT_TOL) {
                    bad.push(format!("ks statistic = {:?}, scipy {wd:?}", g.statistic));
                }
                // Absolute for ordinary p-values, relative for tiny ones.
                if !within(g.p_value, wp, KS_P_TOL)
                    || (g.p_value - wp).abs() > 1e-6 * wp.abs() + 1e-300
                {
                    bad.push(format!(
                        "ks p_value = {:?}, scipy kolmogorov {wp:?}",
                        g.p_value
                    ));
                }
            }
            (None, None, None) => {}
            (g, wd, wp) => bad.push(format!(
                "ks = {:?}, expected statistic {wd:?}, p_value {wp:?} (None ⇔ null)",
                g.as_ref().map(|r| (r.statistic, r.p_value))
            )),
        }
        if name == "identical" {
            if got_psi != Some(0.0) {
                bad.push(format!(
                    "identical data: psi = {got_psi:?}, must be exactly 0"
                ));
            }
            if got_ks.as_ref().map(|r| r.statistic) != Some(0.0) {
                bad.push(format!(
                    "identical data: ks statistic = {:?}, must be exactly 0",
                    got_ks.as_ref().map(|r| r.statistic)
                ));
            }
        }

        let summary = format!(
            "{name} (n {} vs {}, bins {}): psi {:?} vs numpy {:?}; ks D {:?} vs {:?}, p {:?} vs {:?}",
            e.n_reference,
            e.n_current,
            case.bins,
            got_psi,
            e.psi,
            got_ks.as_ref().map(|r| r.statistic),
            e.ks_statistic,
            got_ks.as_ref().map(|r| r.p_value),
            e.ks_p_value,
        );
        if bad.is_empty() {
            eprintln!("ok   {summary}");
        } else {
            eprintln!("FAIL {summary}");
            failures.push(format!("{name}: {}", bad.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} data-drift cases differ from numpy {} / scipy {}:\n{}",
        failures.len(),
        fx.data_cases.len(),
        fx.numpy_version,
        fx.scipy_version,
        failures.join("\n")
    );
}

/// `edgeloop detect` (issue 18): every detector case of the fixture, its
/// stream written as a CSV column and its River parameters given as
/// `--param`, prints River's alarm indices.
#[test]
fn the_detect_command_prints_rivers_alarms() {
    let fx = load();
    let dir = tempfile::tempdir().unwrap();
    for case in &fx.detector_cases {
        let s = stream(&fx, &case.stream);
        let csv = dir.path().join(format!("{}.csv", case.stream));
        let mut text = String::from("t,x\n");
        for (i, v) in s.values.iter().enumerate() {
            text.push_str(&format!("{i},{v}\n"));
        }
        std::fs::write(&csv, text).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"));
        cmd.args([
            "detect",
            "--json",
            "--column",
            "x",
            "--detector",
            &case.detector,
            "--file",
        ])
        .arg(&csv);
        for (k, v) in &case.params {
            cmd.arg("--param").arg(format!("{k}={v}"));
        }
        let out = cmd.output().unwrap();
        let what = format!(
            "{} on {} ({})",
            case.detector,
            case.stream,
            params_text(case)
        );
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let alarms: Vec<usize> = v["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(alarms, case.alarms, "{what}");
        assert_eq!(
            v["rows"].as_u64().unwrap() as usize,
            s.values.len(),
            "{what}"
        );
    }
}
