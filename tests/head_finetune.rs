//! Head fine-tuning of an imported network on drifted data: an MLP trained
//! by scikit-learn on UCI Gas Sensor Array Drift batch 1, written as a
//! torch-style ONNX graph (`tests/fixtures/finetune/gen_finetune.py`), is
//! fine-tuned on the training part of batch 5 (months of sensor drift
//! later); on batch 5's holdout the new file beats the original, whose
//! accuracy equals onnxruntime's, and only the last layer's initializers
//! changed.

#[path = "common/ort.rs"]
mod ort;

use std::path::{Path, PathBuf};

use edgeloop::ingest::csv_file::read_labelled_csv;
use edgeloop::learn::head::{self, FinetuneOptions};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/finetune")
        .join(name)
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("finetune.json")).unwrap()).unwrap()
}

fn classes(r: &Value) -> Vec<String> {
    serde_json::from_value(r["classes"].clone()).unwrap()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(*g) - w).abs() <= tol, "{what} [{i}]: {g} vs {w}");
    }
}

#[test]
fn original_network_runs_as_onnxruntime_runs_it() {
    let r = reference();
    let proto =
        pb::ModelProto::decode(std::fs::read(fixture("gas_mlp.onnx")).unwrap().as_slice()).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(r["rows"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(r["ort_probabilities"].clone()).unwrap();
    let x: Vec<f32> = rows.concat();
    let (got, width) = head::run_output(&proto, None, &x, 128).unwrap();
    assert_eq!(width, 6);
    assert_close(&got, &want.concat(), 1e-4, "probabilities");
    let h = head::find_head(&proto).unwrap();
    assert_eq!(
        (h.input.as_str(), h.weight.as_str(), h.bias.as_str()),
        ("/relu/Relu_output_0", "fc2.weight", "fc2.bias")
    );
    assert_eq!(
        (h.n_hidden, h.n_classes, h.weight_is_class_major),
        (32, 6, true)
    );
}

#[test]
fn edgeloop_logistic_head_is_matmul_plus_add() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/logistic_occupancy.onnx"),
    )
    .unwrap();
    let h = head::find_head(&pb::ModelProto::decode(bytes.as_slice()).unwrap()).unwrap();
    assert_eq!(
        (h.n_hidden, h.n_classes, h.weight_is_class_major),
        (5, 2, false)
    );
}

#[test]
fn finetuned_head_beats_the_original_on_drifted_data_and_only_the_head_changes() {
    let r = reference();
    let classes = classes(&r);
    let csv = read_labelled_csv(&fixture("batch5.csv"), "gas", &[]).unwrap();
    assert_eq!(csv.features.len(), 128);
    assert_eq!(csv.len() as u64, r["n_rows"].as_u64().unwrap());
    let original = std::fs::read(fixture("gas_mlp.onnx")).unwrap();
    let opts = FinetuneOptions {
        holdout: r["holdout_fraction"].as_f64().unwrap(),
        ..Default::default()
    };
    let report = head::finetune(&original, &csv.x, 128, &csv.labels, &classes, &opts).unwrap();
    assert_eq!(report.n_holdout as u64, r["n_holdout"].as_u64().unwrap());
    let ort_accuracy = r["ort_holdout_accuracy"].as_f64().unwrap();
    assert!(
        (report.old_accuracy - ort_accuracy).abs() < 1e-12,
        "original: tract {} vs onnxruntime {ort_accuracy}",
        report.old_accuracy
    );
    assert!(
        report.new_accuracy > report.old_accuracy + 0.3,
        "fine-tuned {} vs original {}",
        report.new_accuracy,
        report.old_accuracy
    );
    assert!(report.promoted, "{}", report.reason);
    assert!(report.loss_after < report.loss_before);

    // Initializers: same names in the same order; only fc2's differ.
    let old = pb::ModelProto::decode(original.as_slice()).unwrap();
    let new = pb::ModelProto::decode(report.onnx.as_slice()).unwrap();
    let (old_g, new_g) = (old.graph.as_ref().unwrap(), new.graph.as_ref().unwrap());
    let names = |g: &pb::GraphProto| {
        g.initializer
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(old_g), names(new_g));
    for (a, b) in old_g.initializer.iter().zip(&new_g.initializer) {
        assert_eq!(
            (a.dims.clone(), a.data_type),
            (b.dims.clone(), b.data_type),
            "{}",
            a.name
        );
        let head = a.name == "fc2.weight" || a.name == "fc2.bias";
        assert_eq!(
            a.raw_data == b.raw_data && a.float_data == b.float_data,
            !head,
            "{}",
            a.name
        );
    }
    assert_eq!(old_g.node, new_g.node);
    assert_eq!(old_g.input, new_g.input);
    assert_eq!(old_g.output, new_g.output);

    // onnxruntime runs the new file as tract does.
    let rows: Vec<f32> = csv.x[..16 * 128].to_vec();
    let (ours, _) = head::run_output(&new, None, &rows, 128).unwrap();
    let theirs = ort::run_onnxruntime(&report.onnx, &rows, 128);
    let theirs: Vec<f64> = theirs["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_close(&ours, &theirs, 1e-4, "fine-tuned probabilities");
}

#[test]
fn finetune_command_prints_the_decision_and_writes_the_promoted_file() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.onnx");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["finetune", "--model"])
            .arg(fixture("gas_mlp.onnx"))
            .arg("--file")
            .arg(fixture("batch5.csv"))
            .args(["--label", "gas", "--holdout", "0.2", "--json", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // Without --classes the labels of batch 5, sorted, are the classes:
    // Toluene is absent from it, so five names for six outputs is refused.
    let refused = run(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("5 classes given"), "{stderr}");
    assert!(!out.exists());

    let output = run(&["--classes", &classes(&r).join(",")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["n_holdout"], r["n_holdout"]);
    let old = v["old_accuracy"].as_f64().unwrap();
    assert!((old - r["ort_holdout_accuracy"].as_f64().unwrap()).abs() < 1e-12);
    assert!(v["new_accuracy"].as_f64().unwrap() > old + 0.3, "{v}");
    assert_eq!(v["promoted"], true);
    assert_eq!(v["written"], out.to_str().unwrap());
    let written = std::fs::read(&out).unwrap();
    let new = pb::ModelProto::decode(written.as_slice()).unwrap();
    assert_eq!(head::find_head(&new).unwrap().weight, "fc2.weight");
}

#[test]
fn the_same_network_exported_by_skl2onnx_is_fine_tuned_too() {
    // skl2onnx writes `label` (ArgMax) as the first output and
    // `probabilities` as Identity(Softmax) second; the head was looked for
    // behind the first output only, so `edgeloop finetune` refused every
    // scikit-learn classifier network ("output `label` is not produced by
    // Softmax").
    let r = reference();
    let classes = classes(&r);
    let original = std::fs::read(fixture("gas_mlp_skl2onnx.onnx")).unwrap();
    let proto = pb::ModelProto::decode(original.as_slice()).unwrap();
    let h = head::find_head(&proto).unwrap();
    assert_eq!(h.output, "probabilities");
    assert_eq!(
        (h.n_hidden, h.n_classes, h.weight_is_class_major),
        (32, 6, false)
    );
    let csv = read_labelled_csv(&fixture("batch5.csv"), "gas", &[]).unwrap();
    let opts = FinetuneOptions {
        holdout: r["holdout_fraction"].as_f64().unwrap(),
        ..Default::default()
    };
    let report = head::finetune(&original, &csv.x, 128, &csv.labels, &classes, &opts).unwrap();
    let ort_accuracy = r["ort_holdout_accuracy_skl2onnx"].as_f64().unwrap();
    assert!(
        (report.old_accuracy - ort_accuracy).abs() < 1e-12,
        "original: tract {} vs onnxruntime {ort_accuracy}",
        report.old_accuracy
    );
    assert!(
        report.new_accuracy > report.old_accuracy + 0.3,
        "fine-tuned {} vs original {}",
        report.new_accuracy,
        report.old_accuracy
    );
    assert!(report.promoted, "{}", report.reason);

    // onnxruntime runs the new file (both outputs) as tract does.
    let new = pb::ModelProto::decode(report.onnx.as_slice()).unwrap();
    assert_eq!(
        new.graph.as_ref().unwrap().output,
        proto.graph.as_ref().unwrap().output
    );
    let rows: Vec<f32> = csv.x[..16 * 128].to_vec();
    let (ours, width) = head::run_output(&new, Some("probabilities"), &rows, 128).unwrap();
    assert_eq!(width, 6);
    let theirs = ort::run_onnxruntime(&report.onnx, &rows, 128);
    let probabilities: Vec<f64> = theirs["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_close(&ours, &probabilities, 1e-4, "fine-tuned probabilities");
    let labels: Vec<&str> = theirs["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let argmax: Vec<&str> = ours
        .chunks(6)
        .map(|p| {
            let k = (0..6).fold(0, |b, k| if p[k] > p[b] { k } else { b });
            classes[k].as_str()
        })
        .collect();
    assert_eq!(labels, argmax);
}
