//! The online learners (`src/learn/online/`) against River 0.26.1: the same
//! streams, test then train, prediction by prediction.
//!
//! Expected predictions come from `tests/fixtures/online/gen_online.py`
//! (River's `StandardScaler() | LogisticRegression()`, one-vs-rest beyond two
//! classes, `HoeffdingTreeClassifier()`, and, for seeds 0-4,
//! `HoeffdingAdaptiveTreeClassifier(seed)` and `ARFClassifier(seed)`, all at
//! River's defaults), which
//! also wrote the generated streams read here; see that script for the
//! streams (River's SEA, Agrawal and RandomRBFDrift generators, and UCI gas
//! sensor drift batches 1 and 4).

use std::path::Path;

use edgeloop::learn::online::{OnlineClassifier, OnlineFamily};

const GAS_CLASSES: [&str; 6] = [
    "Acetaldehyde",
    "Acetone",
    "Ammonia",
    "Ethanol",
    "Ethylene",
    "Toluene",
];

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tests/fixtures/online/online.json"))
        .expect("tests/fixtures/online/online.json (rerun gen_online.py)");
    serde_json::from_str(&text).expect("online.json parses")
}

/// A generated stream: `f0..` columns then `label` (a class index).
fn read_stream(file: &str) -> (Vec<Vec<f64>>, Vec<usize>) {
    let mut r = csv::Reader::from_path(fixture(file)).expect(file);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.expect("csv row");
        let n = rec.len();
        xs.push(
            (0..n - 1)
                .map(|i| rec[i].parse::<f64>().expect("feature"))
                .collect(),
        );
        ys.push(rec[n - 1].parse::<usize>().expect("label"));
    }
    (xs, ys)
}

/// Gas batches in the mirror's CSV: gas name, concentration, 128 features.
fn read_gas(files: &[&str]) -> (Vec<Vec<f64>>, Vec<usize>) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for f in files {
        let text = std::fs::read_to_string(fixture(f)).expect(f);
        for line in text.lines() {
            let fields: Vec<&str> = line.trim().split(',').collect();
            ys.push(
                GAS_CLASSES
                    .iter()
                    .position(|g| *g == fields[0])
                    .expect("known gas"),
            );
            xs.push(
                fields[2..]
                    .iter()
                    .map(|v| v.parse::<f64>().expect("feature"))
                    .collect(),
            );
        }
    }
    (xs, ys)
}

fn stream(reference: &serde_json::Value, name: &str) -> (Vec<Vec<f64>>, Vec<usize>, usize) {
    let s = &reference["streams"][name];
    let n_classes = s["classes"].as_array().expect("classes").len();
    let (xs, ys) = if name == "gas" {
        let files: Vec<&str> = s["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f.as_str().expect("file"))
            .collect();
        read_gas(&files)
    } else {
        read_stream(s["file"].as_str().expect("file"))
    };
    assert_eq!(xs.len() as u64, s["rows"].as_u64().expect("rows"));
    (xs, ys, n_classes)
}

struct Outcome {
    /// Rows where edgeloop and River predict differently.
    differ: Vec<usize>,
    /// Rows where they differ only because edgeloop, with at most one class
    /// learned, predicts that class (or nothing).
    cold_start: Vec<usize>,
    accuracy: f64,
    river_accuracy: f64,
}

/// Test then train over the stream; compares with River's predictions.
fn prequential(reference: &serde_json::Value, name: &str, family: OnlineFamily) -> Outcome {
    let (xs, ys, n_classes) = stream(reference, name);
    let r = &reference["streams"][name]["learners"][family.name()];
    let river: Vec<i64> = r["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p.as_i64().expect("prediction"))
        .collect();
    let mut model = family.new_model(xs[0].len(), Some(n_classes), 0);
    let (mut hits, mut scored, mut differ) = (0u64, 0u64, Vec::new());
    let mut learned: Vec<usize> = Vec::new();
    let mut cold_start = Vec::new();
    for (i, (x, &y)) in xs.iter().zip(&ys).enumerate() {
        let p = model.predict_one(x).expect("width");
        let ours = p.map_or(-1, |c| c as i64);
        if ours != river[i] {
            // Cold start: before any sample edgeloop predicts nothing, with
            // one class learned that class; River's binary logistic
            // regression answers class 0 before learning anything, and may
            // answer the class it has not seen yet.
            let cold = match learned.as_slice() {
                [] => ours == -1,
                [only] => ours == *only as i64,
                _ => false,
            };
            if cold {
                cold_start.push(i);
            } else {
                differ.push(i);
            }
        }
        if !learned.contains(&y) {
            learned.push(y);
        }
        if let Some(c) = p {
            scored += 1;
            hits += u64::from(c == y);
        }
        model.learn_one(x, y).expect("learn");
    }
    Outcome {
        differ,
        cold_start,
        accuracy: hits as f64 / scored as f64,
        river_accuracy: r["accuracy"].as_f64().expect("accuracy"),
    }
}

fn check(name: &str, family: OnlineFamily) {
    let reference = reference();
    let o = prequential(&reference, name, family);
    eprintln!(
        "{name} {family}: accuracy {:.4} (River {:.4}), cold-start rows {:?}, {} rows differ {:?}",
        o.accuracy,
        o.river_accuracy,
        o.cold_start,
        o.differ.len(),
        &o.differ[..o.differ.len().min(10)]
    );
    assert!(
        o.differ.is_empty(),
        "{name} {family}: {} predictions differ from River's, first at rows {:?}",
        o.differ.len(),
        &o.differ[..o.differ.len().min(10)]
    );
    assert!((o.accuracy - o.river_accuracy).abs() < 0.005);
}

#[test]
fn online_logistic_sea_equals_river() {
    check("sea", OnlineFamily::Logistic);
}

#[test]
fn online_logistic_agrawal_equals_river() {
    check("agrawal", OnlineFamily::Logistic);
}

#[test]
fn online_logistic_rbf_drift_equals_river() {
    check("rbf_drift", OnlineFamily::Logistic);
}

#[test]
fn online_logistic_gas_equals_river() {
    check("gas", OnlineFamily::Logistic);
}

#[test]
fn hoeffding_tree_sea_equals_river() {
    check("sea", OnlineFamily::HoeffdingTree);
}

#[test]
fn hoeffding_tree_agrawal_equals_river() {
    check("agrawal", OnlineFamily::HoeffdingTree);
}

#[test]
fn hoeffding_tree_rbf_drift_equals_river() {
    check("rbf_drift", OnlineFamily::HoeffdingTree);
}

#[test]
fn hoeffding_tree_gas_equals_river() {
    check("gas", OnlineFamily::HoeffdingTree);
}

/// `edgeloop evaluate --prequential --family …` reads the CSV's features as
/// `f32` (as samples are stored), so its accuracy is River's within half a
/// point rather than row for row.
#[test]
fn evaluate_prequential_online_is_rivers_within_half_a_point() {
    use edgeloop::monitor::prequential::{run_online, OnlineOptions};
    let reference = reference();
    for name in ["sea", "agrawal", "rbf_drift"] {
        let s = &reference["streams"][name];
        for family in [OnlineFamily::Logistic, OnlineFamily::HoeffdingTree] {
            let report = run_online(&OnlineOptions {
                file: fixture(s["file"].as_str().expect("file")),
                label: "label".into(),
                features: Vec::new(),
                family,
                segments: 4,
                seed: 0,
                temporal: Default::default(),
            })
            .expect("replay");
            let river = s["learners"][family.name()]["accuracy"]
                .as_f64()
                .expect("accuracy");
            let ours = report.accuracy.expect("scored rows");
            eprintln!(
                "{name} {family}: {ours:.4} (River {river:.4}), {:.0} rows/s",
                report.rows_per_second
            );
            assert_eq!(report.rows, s["rows"].as_u64().expect("rows"));
            assert!(
                (ours - river).abs() <= 0.005,
                "{name} {family}: {ours} against River's {river}"
            );
        }
    }
}

/// The randomised learners (the adaptive random forest's Poisson weights
/// and feature draws, the adaptive tree's Poisson weights) draw from Python's
/// `random.Random(seed)` as River does, so for each of River's 5 seeds their
/// predictions are River's row by row (cold start aside, as in [`check`]).
fn check_seeded(name: &str, family: OnlineFamily) {
    let reference = reference();
    let (xs, ys, n_classes) = stream(&reference, name);
    let r = &reference["streams"][name]["learners"][family.name()];
    let seeds: Vec<u64> = r["seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .map(|s| s.as_u64().expect("seed"))
        .collect();
    let runs = r["predictions"].as_array().expect("predictions per seed");
    let river_runs: Vec<f64> = r["accuracies"]
        .as_array()
        .expect("accuracies")
        .iter()
        .map(|a| a.as_f64().expect("accuracy"))
        .collect();
    for (k, &seed) in seeds.iter().enumerate() {
        let river: Vec<i64> = runs[k]
            .as_array()
            .expect("predictions")
            .iter()
            .map(|p| p.as_i64().expect("prediction"))
            .collect();
        let mut model = family.new_model(xs[0].len(), Some(n_classes), seed);
        let (mut hits, mut scored, mut differ) = (0u64, 0u64, Vec::new());
        for (i, (x, &y)) in xs.iter().zip(&ys).enumerate() {
            let p = model.predict_one(x).expect("width");
            if p.map_or(-1, |c| c as i64) != river[i] {
                differ.push(i);
            }
            if let Some(c) = p {
                scored += 1;
                hits += u64::from(c == y);
            }
            model.learn_one(x, y).expect("learn");
        }
        let ours = hits as f64 / scored as f64;
        eprintln!(
            "{name} {family} seed {seed}: accuracy {ours:.4} (River {:.4}), {} rows differ {:?}",
            river_runs[k],
            differ.len(),
            &differ[..differ.len().min(10)]
        );
        assert!(
            differ.is_empty(),
            "{name} {family} seed {seed}: {} predictions differ from River's, first at rows {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        );
        assert!((ours - river_runs[k]).abs() < 1e-12);
    }
}

#[test]
fn arf_sea_equals_river() {
    check_seeded("sea", OnlineFamily::Arf);
}

#[test]
fn arf_agrawal_equals_river() {
    check_seeded("agrawal", OnlineFamily::Arf);
}

#[test]
fn arf_rbf_drift_equals_river() {
    check_seeded("rbf_drift", OnlineFamily::Arf);
}

#[test]
fn arf_gas_equals_river() {
    check_seeded("gas", OnlineFamily::Arf);
}

#[test]
fn hoeffding_adaptive_tree_sea_equals_river() {
    check_seeded("sea", OnlineFamily::HoeffdingAdaptiveTree);
}

#[test]
fn hoeffding_adaptive_tree_agrawal_equals_river() {
    check_seeded("agrawal", OnlineFamily::HoeffdingAdaptiveTree);
}

#[test]
fn hoeffding_adaptive_tree_rbf_drift_equals_river() {
    check_seeded("rbf_drift", OnlineFamily::HoeffdingAdaptiveTree);
}

#[test]
fn hoeffding_adaptive_tree_gas_equals_river() {
    check_seeded("gas", OnlineFamily::HoeffdingAdaptiveTree);
}

/// Temporal features widen the learner's rows (3 one-hot columns of the last
/// label beside RandomRBFDrift's 10 features), and the report's baseline is
/// the previous row's label, recomputed here from the file.
#[test]
fn evaluate_prequential_with_the_last_label() {
    use edgeloop::features::temporal::TemporalConfig;
    use edgeloop::monitor::prequential::{run_online, OnlineOptions};
    let reference = reference();
    let (_, ys, _) = stream(&reference, "rbf_drift");
    let report = run_online(&OnlineOptions {
        file: fixture("tests/fixtures/online/rbf_drift.csv"),
        label: "label".into(),
        features: Vec::new(),
        family: OnlineFamily::HoeffdingTree,
        segments: 2,
        seed: 0,
        temporal: TemporalConfig {
            last_label: true,
            ..TemporalConfig::default()
        },
    })
    .expect("replay");
    assert_eq!(report.model_features, 13);
    let same = ys.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(
        report.previous_label_accuracy,
        Some(same as f64 / (ys.len() - 1) as f64)
    );
    assert_eq!(report.scored, ys.len() as u64 - 1);
}

/// The exported ONNX graph of `online_logistic`, run by tract, gives the
/// in-memory model's probabilities (f32 against f64: within 1e-5) on rows it
/// has not learned: binary (SEA), one-vs-rest (RandomRBFDrift, gas with a
/// class never seen), after one class only, and with missing values.
#[test]
fn online_logistic_onnx_export_equals_the_model() {
    use edgeloop::learn::online::{OnlineLogistic, OnlineLogisticConfig};
    use edgeloop::serve::engine::OnnxModel;
    let reference = reference();
    for (name, learn) in [("sea", 2000), ("rbf_drift", 2000), ("gas", 500), ("sea", 1)] {
        let (xs, ys, n_classes) = stream(&reference, name);
        let classes: Vec<String> = (0..n_classes).map(|c| format!("c{c}")).collect();
        let nf = xs[0].len();
        let features: Vec<String> = (0..nf).map(|j| format!("f{j}")).collect();
        let as_f32 = |x: &[f64]| -> Vec<f64> { x.iter().map(|v| f64::from(*v as f32)).collect() };
        let mut model = OnlineLogistic::new(nf, Some(n_classes), OnlineLogisticConfig::default());
        for (x, &y) in xs.iter().zip(&ys).take(learn) {
            model.learn_one(&as_f32(x), y).expect("learn");
        }
        let onnx = OnnxModel::load(&model.to_onnx(&features, &classes, 1)).expect("tract loads it");
        let mut rows: Vec<Vec<f64>> = xs[learn..learn + 100].iter().map(|x| as_f32(x)).collect();
        rows[7][0] = f64::NAN;
        let flat: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();
        let got = onnx.predict_proba(&flat).expect("run");
        for (i, row) in rows.iter().enumerate() {
            let want = model.predict_proba_one(row).expect("width");
            for c in 0..n_classes {
                let w = want.get(c).copied().unwrap_or(0.0);
                let g = f64::from(got[i * n_classes + c]);
                assert!(
                    (g - w).abs() < 1e-5,
                    "{name} after {learn}: row {i} class {c}: onnx {g} model {w}"
                );
            }
        }
    }
}

/// `edgeloop evaluate --prequential` with only --file and --label (the
/// defaults): the loop, `online_logistic` and `arf` (both with the last
/// label) and the previous label all predict every row, and the headline
/// printed is the served prediction's accuracy. Recomputed here from the
/// per-row record (`--record`): the served accuracy, the no-change column
/// (the previous row's label), the loop's first prediction (after
/// `min_samples` = 200 rows), and the served column itself, rederived from
/// the learners' columns by the rule the docs state (the best over the
/// last 200 rows all predicted, a 2-point lead to change, starting with the
/// first online learner). Without the last label, the `online_logistic`
/// column is River's `LogisticRegression` within half a point (features
/// read as f32).
#[test]
fn evaluate_defaults_print_the_served_accuracy_of_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("record.csv");
    let sea = fixture("tests/fixtures/online/sea.csv");
    let run = |extra: &[&str], json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"));
        cmd.args(["evaluate", "--prequential", "--label", "label", "--file"])
            .arg(&sea)
            .arg("--record")
            .arg(&record)
            .args(extra);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("edgeloop runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let read = || {
        let mut r = csv::Reader::from_path(&record).expect("record");
        let head: Vec<String> = r
            .headers()
            .expect("header")
            .iter()
            .map(String::from)
            .collect();
        let rows: Vec<Vec<String>> = r
            .records()
            .map(|x| x.expect("row").iter().map(String::from).collect())
            .collect();
        (head, rows)
    };
    let text = run(&[], false);
    let (head, rows) = read();
    assert_eq!(
        head,
        [
            "row",
            "label",
            "loop",
            "online_logistic",
            "arf",
            "no_change",
            "served"
        ]
    );
    assert_eq!(rows.len(), 10_000);
    let served = rows.iter().filter(|r| !r[6].is_empty()).count();
    let right = rows
        .iter()
        .filter(|r| !r[6].is_empty() && r[6] == r[1])
        .count();
    let accuracy = right as f64 / served as f64;
    let printed = format!("served accuracy {accuracy:.4} over {served} rows");
    assert!(text.contains(&printed), "{printed} not in:\n{text}");
    let json: serde_json::Value = serde_json::from_str(&run(&[], true)).expect("json");
    assert_eq!(json["served_accuracy"].as_f64(), Some(accuracy));
    assert_eq!(json["temporal"]["last_label"], true);
    for (i, r) in rows.iter().enumerate() {
        let previous = if i == 0 { "" } else { rows[i - 1][1].as_str() };
        assert_eq!(r[5], previous, "row {i}: no-change is the previous label");
        assert_eq!(r[2].is_empty(), i < 200, "row {i}: the loop's first model");
    }
    // The served column from the learners' columns (loop, online_logistic,
    // arf, no_change).
    let mut recent: std::collections::VecDeque<[bool; 4]> = Default::default();
    let mut serving = 1;
    for (i, r) in rows.iter().enumerate() {
        let preds = &r[2..6];
        let want = if preds[serving].is_empty() {
            preds
                .iter()
                .find(|p| !p.is_empty())
                .cloned()
                .unwrap_or_default()
        } else {
            preds[serving].clone()
        };
        assert_eq!(r[6], want, "row {i}: served by learner {serving}");
        if preds.iter().all(|p| !p.is_empty()) {
            if recent.len() == 200 {
                recent.pop_front();
            }
            recent.push_back([0, 1, 2, 3].map(|k| preds[k] == r[1]));
            let acc =
                |k: usize| recent.iter().filter(|x| x[k]).count() as f64 / recent.len() as f64;
            let best = (0..4)
                .max_by(|&a, &b| acc(a).total_cmp(&acc(b)).then(b.cmp(&a)))
                .expect("four");
            if best != serving && acc(best) > acc(serving) + 0.02 {
                serving = best;
            }
        }
    }
    // The logistic learner alone, on the readings only (no lags, no last
    // label): River's.
    run(
        &[
            "--online",
            "online_logistic",
            "--lags",
            "0",
            "--last-label",
            "false",
            "--no-change",
            "false",
        ],
        false,
    );
    let (head, rows) = read();
    assert_eq!(head, ["row", "label", "loop", "online_logistic", "served"]);
    let scored: Vec<&Vec<String>> = rows.iter().filter(|r| !r[3].is_empty()).collect();
    let ours = scored.iter().filter(|r| r[3] == r[1]).count() as f64 / scored.len() as f64;
    let river = reference()["streams"]["sea"]["learners"]["online_logistic"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(
        (ours - river).abs() <= 0.005,
        "{ours} against River's {river}"
    );
}
