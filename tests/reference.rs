//! The logistic trainer against scikit-learn's `LogisticRegression`, and its exported
//! ONNX graph against onnxruntime. Each section names its fixture and the script that
//! wrote it. (The metrics and k-fold splitters are checked in `reference_metrics.rs`.)

// ---------------------------------------------------------------------------
// The logistic trainer against scikit-learn's LogisticRegression.
//
// Expected values: `tests/fixtures/logistic/occupancy_logistic.json`, written by
// `tests/fixtures/logistic/gen_logistic.py` (StandardScaler + LogisticRegression
// with the C that matches our objective, cross-checked there by a direct scipy
// minimisation).

mod logistic_reference {
    use edgeloop::learn::lbfgs::Stop;
    use edgeloop::learn::logistic::{LogisticConfig, LogisticModel};
    use serde::Deserialize;
    use std::path::Path;

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        classes: Vec<String>,
        feature_names: Vec<String>,
        l2: f64,
        n_train: usize,
        scaler_mean: Vec<f64>,
        scaler_scale: Vec<f64>,
        objective: f64,
        predict_proba: Vec<Vec<f64>>,
        holdout_accuracy: f64,
    }

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// (features, label) rows of a CSV: `label_col`, then `n` feature columns from `first`.
    fn read(
        path: &Path,
        header: bool,
        label_col: usize,
        first: usize,
        n: usize,
    ) -> Vec<(Vec<f32>, String)> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(header)
            .trim(csv::Trim::All)
            .flexible(true)
            .from_path(path)
            .unwrap();
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                let x = (first..first + n)
                    .map(|i| r[i].parse::<f32>().unwrap())
                    .collect();
                (x, r[label_col].to_string())
            })
            .collect()
    }

    fn data(case: &Case) -> (Vec<(Vec<f32>, String)>, Vec<(Vec<f32>, String)>) {
        match case.name.as_str() {
            "occupancy" => {
                let dir = root().join("data/occupancy_uci");
                let train = read(&dir.join("datatraining.txt"), true, 6, 1, 5);
                let test = read(&dir.join("datatest.txt"), true, 6, 1, 5);
                (train[..case.n_train].to_vec(), test)
            }
            "gas_batch1" => {
                let all = read(
                    &root().join("tests/fixtures/logistic/gas_batch1.csv"),
                    false,
                    0,
                    2,
                    8,
                );
                (all[..case.n_train].to_vec(), all[case.n_train..].to_vec())
            }
            other => panic!("unknown case {other}"),
        }
    }

    #[test]
    fn trainer_matches_sklearn_logistic_regression() {
        let path = root().join("tests/fixtures/logistic/occupancy_logistic.json");
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let names: Vec<&str> = fixture.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["occupancy", "gas_batch1"]);
        for case in &fixture.cases {
            let (train, holdout) = data(case);
            let index = |l: &str| case.classes.iter().position(|c| c == l);
            let x: Vec<f32> = train.iter().flat_map(|(f, _)| f.clone()).collect();
            let y: Vec<usize> = train.iter().map(|(_, l)| index(l).unwrap()).collect();
            let cfg = LogisticConfig {
                l2: case.l2,
                max_iter: 2000,
                gtol: 1e-10,
            };
            let model = LogisticModel::fit(
                &x,
                &y,
                case.classes.clone(),
                case.feature_names.clone(),
                &cfg,
                || false,
            )
            .unwrap();
            eprintln!(
                "{}: {:?} after {} iterations, objective {} (sklearn {})",
                case.name, model.stop, model.iterations, model.objective, case.objective
            );
            assert_ne!(model.stop, Stop::MaxIter, "{}: did not converge", case.name);
            for (j, (m, s)) in case.scaler_mean.iter().zip(&case.scaler_scale).enumerate() {
                let rel = |a: f32, b: f64| ((f64::from(a) - b) / b.abs().max(1e-12)).abs();
                assert!(
                    rel(model.scaler.mean[j], *m) < 1e-5,
                    "{} mean[{j}]",
                    case.name
                );
                assert!(
                    rel(model.scaler.scale[j], *s) < 1e-5,
                    "{} scale[{j}]",
                    case.name
                );
            }
            assert!(
                (model.objective - case.objective).abs() < 1e-6,
                "{}: objective {} vs sklearn's {}",
                case.name,
                model.objective,
                case.objective
            );
            let hx: Vec<f32> = holdout.iter().flat_map(|(f, _)| f.clone()).collect();
            let proba = model.predict_proba(&hx);
            let k = case.classes.len();
            let mut worst = 0f64;
            for (i, expected) in case.predict_proba.iter().enumerate() {
                for (c, e) in expected.iter().enumerate() {
                    worst = worst.max((f64::from(proba[i * k + c]) - e).abs());
                }
            }
            assert!(
                worst < 1e-5,
                "{}: largest probability difference {worst}",
                case.name
            );
            let pred = edgeloop::learn::logistic::argmax_rows(&proba, k);
            let correct = pred
                .iter()
                .zip(&holdout)
                .filter(|(p, (_, l))| case.classes[**p] == *l)
                .count();
            let accuracy = correct as f64 / holdout.len() as f64;
            assert!(
                (accuracy - case.holdout_accuracy).abs() < 1e-12,
                "{}: accuracy {accuracy}",
                case.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The exported ONNX graph against onnxruntime.
//
// `tests/fixtures/onnx/logistic_occupancy.onnx` was exported by edgeloop
// (`cargo run --example onnx_fixture`); `gen_onnx.py` recorded onnxruntime's
// outputs for it in `logistic_occupancy.ort.json`.

mod onnx_reference {
    use edgeloop::learn::logistic::LogisticModel;
    use edgeloop::serve::engine::OnnxModel;
    use prost::Message;
    use serde::Deserialize;
    use std::path::Path;
    use tract_onnx::pb::ModelProto;

    #[derive(Deserialize)]
    struct Ort {
        inputs: Vec<Vec<Option<f32>>>,
        probabilities: Vec<Vec<f32>>,
        label: Vec<i64>,
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/onnx")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn exported_graph_runs_in_tract_as_in_onnxruntime() {
        let onnx = fixture("logistic_occupancy.onnx");
        let model: LogisticModel =
            serde_json::from_slice(&fixture("logistic_occupancy.params.json")).unwrap();
        // The committed file is what today's exporter writes (else rerun the
        // example and gen_onnx.py).
        let ours =
            ModelProto::decode(edgeloop::learn::logistic::logistic_to_onnx(&model, 1).as_slice())
                .unwrap();
        let committed = ModelProto::decode(onnx.as_slice()).unwrap();
        assert_eq!(
            ours.graph, committed.graph,
            "exporter changed: regenerate tests/fixtures/onnx"
        );
        assert_eq!(ours.opset_import, committed.opset_import);

        let ort: Ort = serde_json::from_slice(&fixture("logistic_occupancy.ort.json")).unwrap();
        assert_eq!(ort.inputs.len(), 2680);
        assert!(
            ort.inputs.iter().any(|r| r.iter().all(Option::is_none)),
            "a row with every value missing"
        );
        let x: Vec<f32> = ort
            .inputs
            .iter()
            .flatten()
            .map(|v| v.unwrap_or(f32::NAN))
            .collect();
        let tract = OnnxModel::load(&onnx).unwrap();
        assert_eq!(tract.classes(), ["0", "1"]);
        let served = tract.predict_proba(&x).unwrap();
        let in_process = model.predict_proba(&x);
        let mut worst = (0f32, 0f32);
        for (i, (expected, label)) in ort.probabilities.iter().zip(&ort.label).enumerate() {
            for (k, e) in expected.iter().enumerate() {
                worst.0 = worst.0.max((served[i * 2 + k] - e).abs());
                worst.1 = worst.1.max((in_process[i * 2 + k] - e).abs());
            }
            let argmax = edgeloop::learn::logistic::argmax_rows(&served[i * 2..i * 2 + 2], 2)[0];
            assert_eq!(argmax as i64, *label, "row {i}");
        }
        assert!(worst.0 <= 1e-5, "tract vs onnxruntime: {}", worst.0);
        assert!(worst.1 <= 1e-5, "in-process vs onnxruntime: {}", worst.1);
    }
}
