//! The online regressors (`src/learn/online/`) against River 0.26.1: the
//! same streams, test then train, prediction by prediction.
//!
//! Expected predictions come from
//! `tests/fixtures/online/gen_online_regression.py` (River's
//! `HoeffdingTreeRegressor()` and, for seeds 0-4, `ARFRegressor(seed)`, at
//! River's defaults), which also wrote the generated streams read here: River's
//! Friedman and FriedmanDrift generators, and the first 2,000 rows of UCI Air
//! Quality (missing values included).

use std::path::Path;

#[path = "common/ort.rs"]
mod ort;

use edgeloop::learn::online::{
    ArfRegressor, ArfRegressorConfig, HoeffdingTreeRegressor, HoeffdingTreeRegressorConfig,
    OnlineFamily, OnlineRegression, OnlineRegressor,
};
use ort::run_onnxruntime;

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tests/fixtures/online/online_regression.json"))
        .expect("tests/fixtures/online/online_regression.json (rerun gen_online_regression.py)");
    serde_json::from_str(&text).expect("online_regression.json parses")
}

/// A stream's rows: feature columns then `label`; an empty field is missing.
fn stream(reference: &serde_json::Value, name: &str) -> (Vec<Vec<f64>>, Vec<f64>) {
    let s = &reference["streams"][name];
    let file = s["file"].as_str().expect("file");
    let rows = s["rows"].as_u64().expect("rows") as usize;
    let mut r = csv::Reader::from_path(fixture(file)).expect(file);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for rec in r.records().take(rows) {
        let rec = rec.expect("csv row");
        let n = rec.len();
        xs.push(
            (0..n - 1)
                .map(|i| {
                    if rec[i].is_empty() {
                        f64::NAN
                    } else {
                        rec[i].parse::<f64>().expect("feature")
                    }
                })
                .collect(),
        );
        ys.push(rec[n - 1].parse::<f64>().expect("label"));
    }
    assert_eq!(xs.len(), rows);
    (xs, ys)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| p.as_f64().expect("number"))
        .collect()
}

/// Prequential MAE and R² (River's `metrics.MAE`, `metrics.R2`: `1 − SSE /
/// SST` about the running mean of the targets).
fn mae_r2(ys: &[f64], preds: &[f64]) -> (f64, f64) {
    let n = ys.len() as f64;
    let mae = ys
        .iter()
        .zip(preds)
        .map(|(y, p)| (y - p).abs())
        .sum::<f64>()
        / n;
    let mean = ys.iter().sum::<f64>() / n;
    let sst: f64 = ys.iter().map(|y| (y - mean) * (y - mean)).sum();
    let sse: f64 = ys.iter().zip(preds).map(|(y, p)| (y - p) * (y - p)).sum();
    (mae, 1.0 - sse / sst)
}

/// Test then train with `model`; the first row (and its values) where the
/// prediction is off River's by more than `rel` relative (to max(1, |river|)).
fn compare(
    model: &mut dyn OnlineRegressor,
    xs: &[Vec<f64>],
    ys: &[f64],
    river: &[f64],
    rel: f64,
) -> (Vec<f64>, Option<(usize, f64, f64)>) {
    let mut preds = Vec::with_capacity(xs.len());
    let mut first_off = None;
    for (i, (x, &y)) in xs.iter().zip(ys).enumerate() {
        let p = model.predict_one(x).expect("width");
        if first_off.is_none() && (p - river[i]).abs() > rel * river[i].abs().max(1.0) {
            first_off = Some((i, p, river[i]));
        }
        preds.push(p);
        model.learn_one(x, y).expect("width");
    }
    (preds, first_off)
}

fn check_tree(name: &str) {
    let reference = reference();
    let (xs, ys) = stream(&reference, name);
    let r = &reference["streams"][name]["learners"]["hoeffding_tree"];
    let river = floats(&r["predictions"]);
    let mut model =
        HoeffdingTreeRegressor::new(xs[0].len(), HoeffdingTreeRegressorConfig::default());
    let (preds, off) = compare(&mut model, &xs, &ys, &river, 1e-6);
    assert_eq!(
        off, None,
        "{name}: first row off River's (row, ours, River's)"
    );
    let (mae, r2) = mae_r2(&ys, &preds);
    let (rmae, rr2) = (r["mae"].as_f64().unwrap(), r["r2"].as_f64().unwrap());
    assert!(
        (mae - rmae).abs() < 1e-6 * rmae,
        "{name}: MAE {mae} River {rmae}"
    );
    assert!((r2 - rr2).abs() < 1e-6, "{name}: R² {r2} River {rr2}");
    eprintln!(
        "{name}: hoeffding_tree MAE {mae:.6} (River {rmae:.6}), R² {r2:.6}, {} leaves",
        model.n_leaves()
    );
}

#[test]
fn hoeffding_tree_regressor_friedman_equals_river() {
    check_tree("friedman");
}

#[test]
fn hoeffding_tree_regressor_friedman_drift_equals_river() {
    check_tree("friedman_drift");
}

#[test]
fn hoeffding_tree_regressor_air_quality_equals_river() {
    check_tree("air_quality");
}

/// The forest for each of River's seeds: row by row within `1e-6` relative
/// of River's predictions, and the mean MAE over the seeds River's.
fn check_forest(name: &str) {
    let reference = reference();
    let (xs, ys) = stream(&reference, name);
    let r = &reference["streams"][name]["learners"]["arf"];
    let seeds: Vec<u64> = r["seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .map(|s| s.as_u64().expect("seed"))
        .collect();
    let mut maes = Vec::new();
    for (s, seed) in seeds.iter().enumerate() {
        let river = floats(&r["predictions"][s]);
        let mut model = ArfRegressor::new(
            xs[0].len(),
            ArfRegressorConfig {
                seed: *seed,
                ..ArfRegressorConfig::default()
            },
        );
        let (preds, off) = compare(&mut model, &xs, &ys, &river, 1e-6);
        assert_eq!(
            off, None,
            "{name} seed {seed}: first row off River's (row, ours, River's)"
        );
        maes.push(mae_r2(&ys, &preds).0);
    }
    let mean = maes.iter().sum::<f64>() / maes.len() as f64;
    let river = r["mean_mae"].as_f64().expect("mean_mae");
    assert!(
        (mean - river).abs() < 1e-6 * river,
        "{name}: mean MAE {mean} River {river}"
    );
    eprintln!("{name}: arf mean MAE over seeds {seeds:?}: {mean:.6} (River {river:.6})");
}

#[test]
fn arf_regressor_friedman_equals_river() {
    check_forest("friedman");
}

#[test]
fn arf_regressor_friedman_drift_equals_river() {
    check_forest("friedman_drift");
}

#[test]
fn arf_regressor_air_quality_equals_river() {
    check_forest("air_quality");
}

/// The families (`OnlineRegression`: River's `StandardScaler() | model`)
/// against River's pipelines: the tree row by row; the forest on River's
/// five seeds row by row.
fn check_family(name: &str, family: OnlineFamily) {
    let reference = reference();
    let (xs, ys) = stream(&reference, name);
    let r = &reference["streams"][name]["learners"][format!("{}_scaled", family.name())];
    let runs: Vec<(u64, Vec<f64>)> = match family {
        OnlineFamily::Arf => r["seeds"]
            .as_array()
            .expect("seeds")
            .iter()
            .enumerate()
            .map(|(s, seed)| (seed.as_u64().expect("seed"), floats(&r["predictions"][s])))
            .collect(),
        _ => vec![(0, floats(&r["predictions"]))],
    };
    let mut maes = Vec::new();
    for (seed, river) in &runs {
        let mut model = OnlineRegression::new(family, xs[0].len(), *seed).expect("a regressor");
        let (preds, off) = compare(&mut model, &xs, &ys, river, 1e-6);
        assert_eq!(
            off, None,
            "{name} {family} seed {seed}: first row off River's (row, ours, River's)"
        );
        maes.push(mae_r2(&ys, &preds).0);
    }
    let mean = maes.iter().sum::<f64>() / maes.len() as f64;
    let river = r
        .get("mean_mae")
        .or_else(|| r.get("mae"))
        .and_then(serde_json::Value::as_f64)
        .expect("mae");
    assert!(
        (mean - river).abs() < 1e-6 * river,
        "{name} {family}: MAE {mean} River {river}"
    );
    eprintln!("{name}: scaled {family} MAE {mean:.6} (River {river:.6})");
}

#[test]
fn scaled_hoeffding_tree_equals_rivers_pipeline() {
    for name in ["friedman", "friedman_drift", "air_quality"] {
        check_family(name, OnlineFamily::HoeffdingTree);
    }
}

#[test]
fn scaled_arf_equals_rivers_pipeline() {
    for name in ["friedman", "friedman_drift", "air_quality"] {
        check_family(name, OnlineFamily::Arf);
    }
}

/// The exported ONNX graph (`export::regressor_to_onnx`), run by tract and
/// by onnxruntime, gives the model's predictions within 1e-5 (relative to
/// max(1, |prediction|)) on 200 rows it has not learned, some with missing
/// values: after 0, 1 and 1,500 rows (air quality: missing values in the
/// learned rows too), for both families.
#[test]
fn regressor_onnx_export_equals_the_model() {
    use edgeloop::learn::online::export::regressor_to_onnx;
    use edgeloop::serve::engine::OnnxModel;
    let reference = reference();
    for name in ["friedman_drift", "air_quality"] {
        let (xs, ys) = stream(&reference, name);
        let nf = xs[0].len();
        let features: Vec<String> = (0..nf).map(|j| format!("f{j}")).collect();
        let as_f32 = |x: &[f64]| -> Vec<f64> { x.iter().map(|v| f64::from(*v as f32)).collect() };
        for family in [OnlineFamily::HoeffdingTree, OnlineFamily::Arf] {
            for learn in [0, 1, 1500] {
                let mut model = OnlineRegression::new(family, nf, 3).expect("a regressor");
                for (x, &y) in xs.iter().zip(&ys).take(learn) {
                    model.learn_one(&as_f32(x), y).expect("learn");
                }
                let onnx = regressor_to_onnx(&model, &features, 1);
                let mut rows: Vec<Vec<f64>> = xs[1500..1700].iter().map(|x| as_f32(x)).collect();
                for i in (0..rows.len()).step_by(7) {
                    rows[i][i % nf] = f64::NAN;
                }
                let flat: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();
                let tract = OnnxModel::load(&onnx)
                    .unwrap_or_else(|e| panic!("{name} {family}: tract loads it: {e}"))
                    .predict_proba(&flat)
                    .expect("tract runs");
                let ort = run_onnxruntime(&onnx, &flat, nf);
                let ort: Vec<f64> = ort["prediction"]
                    .as_array()
                    .expect("prediction")
                    .iter()
                    .flat_map(|r| r.as_array().cloned().unwrap_or_else(|| vec![r.clone()]))
                    .map(|v| v.as_f64().expect("number"))
                    .collect();
                assert_eq!(tract.len(), rows.len());
                assert_eq!(ort.len(), rows.len());
                for (i, row) in rows.iter().enumerate() {
                    let want = model.predict_one(row).expect("width");
                    let tol = 1e-5 * want.abs().max(1.0);
                    let (t, o) = (f64::from(tract[i]), ort[i]);
                    assert!(
                        (t - want).abs() < tol && (o - want).abs() < tol,
                        "{name} {family} after {learn}: row {i}: tract {t} onnxruntime {o} model {want}"
                    );
                }
            }
        }
    }
}

/// `edgeloop evaluate --prequential --family hoeffding_tree|arf` on a
/// regression label (`run_online_regression`) on the first 2,000 rows of
/// Air Quality: every row scored, MAE within 1% of River's pipeline
/// (features read as f32 there, as samples are stored), R² and the segments
/// consistent.
#[test]
fn evaluate_prequential_regression_is_rivers_within_one_percent() {
    use edgeloop::monitor::prequential_regression::{run_online_regression, RegressionOptions};
    let reference = reference();
    let text = std::fs::read_to_string(fixture("tests/fixtures/datasets/air_quality_train.csv"))
        .expect("air quality");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("air.csv");
    let head: Vec<&str> = text.lines().take(2001).collect();
    std::fs::write(&file, head.join("\n") + "\n").expect("write");
    for family in [OnlineFamily::HoeffdingTree, OnlineFamily::Arf] {
        let report = run_online_regression(&RegressionOptions {
            file: file.clone(),
            label: "label".into(),
            features: Vec::new(),
            family,
            segments: 4,
            seed: 0,
        })
        .expect("replay");
        assert_eq!(report.rows, 2000);
        assert_eq!(report.features.len(), 8);
        let r =
            &reference["streams"]["air_quality"]["learners"][format!("{}_scaled", family.name())];
        let river = match family {
            OnlineFamily::Arf => r["maes"][0].as_f64(),
            _ => r["mae"].as_f64(),
        }
        .expect("mae");
        let mae = report.mae.expect("mae");
        assert!(
            (mae - river).abs() < 0.01 * river,
            "{family}: MAE {mae} River {river}"
        );
        let seg: f64 = report
            .segments
            .iter()
            .map(|s| s.mae.unwrap() * 500.0)
            .sum::<f64>()
            / 2000.0;
        assert!((seg - mae).abs() < 1e-9, "segments {seg} overall {mae}");
        assert!(report.r2.expect("r2") < 1.0);
        eprintln!(
            "air quality {family}: MAE {mae:.4} (River {river:.4}), R² {:.4}, {:.0} rows/s",
            report.r2.unwrap(),
            report.rows_per_second
        );
    }
}

/// `edgeloop evaluate --prequential --file F --label L` on a regression
/// label with nothing else: the task is guessed (numbers, more than 20
/// distinct) and the default online regressor, `hoeffding_tree`, replays the
/// file: River's pipeline's MAE within 1% (features read as f32). `--family
/// logistic` (a batch classifier) is refused on it.
#[test]
fn evaluate_defaults_on_a_regression_label_replay_the_online_tree() {
    let reference = reference();
    let text = std::fs::read_to_string(fixture("tests/fixtures/datasets/air_quality_train.csv"))
        .expect("air quality");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("air.csv");
    let head: Vec<&str> = text.lines().take(2001).collect();
    std::fs::write(&file, head.join("\n") + "\n").expect("write");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["evaluate", "--prequential", "--file"])
            .arg(&file)
            .args(["--label", "label"])
            .args(extra)
            .output()
            .expect("edgeloop runs")
    };
    let out = run(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["family"], "hoeffding_tree");
    assert_eq!(report["rows"], 2000);
    let river = reference["streams"]["air_quality"]["learners"]["hoeffding_tree_scaled"]["mae"]
        .as_f64()
        .expect("mae");
    let mae = report["mae"].as_f64().expect("mae");
    assert!(
        (mae - river).abs() < 0.01 * river,
        "MAE {mae} River {river}"
    );
    let refused = run(&["--family", "logistic"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("online regressor"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
