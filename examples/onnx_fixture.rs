//! Writes the ONNX fixture that onnxruntime checks:
//! `tests/fixtures/onnx/logistic_occupancy.onnx` and the parameters it was
//! exported from, `logistic_occupancy.params.json`.
//!
//! The model is trained by edgeloop's trainer on the first 1,600 rows of
//! `data/occupancy_uci/datatraining.txt` (l2 = 1e-3). Then
//! `python3 tests/fixtures/onnx/gen_onnx.py` records onnxruntime's outputs.
//! Rerun both when the exporter changes (`tests/reference.rs` says so).
//!
//! ```sh
//! cargo run --example onnx_fixture && python3 tests/fixtures/onnx/gen_onnx.py
//! ```

use std::path::Path;

use edgeloop::learn::logistic::{LogisticConfig, LogisticModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut reader = csv::Reader::from_path(root.join("data/occupancy_uci/datatraining.txt"))?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for record in reader.records().take(1600) {
        let r = record?;
        for i in 1..6 {
            x.push(r[i].trim().parse::<f32>()?);
        }
        y.push(r[6].trim().parse::<usize>()?);
    }
    let features = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
        .map(String::from)
        .to_vec();
    let cfg = LogisticConfig {
        l2: 1e-3,
        max_iter: 1000,
        gtol: 1e-10,
    };
    let model = LogisticModel::fit(&x, &y, vec!["0".into(), "1".into()], features, &cfg, || {
        false
    })?;
    let dir = root.join("tests/fixtures/onnx");
    std::fs::write(
        dir.join("logistic_occupancy.onnx"),
        edgeloop::learn::logistic::logistic_to_onnx(&model, 1),
    )?;
    std::fs::write(
        dir.join("logistic_occupancy.params.json"),
        serde_json::to_string_pretty(&model)? + "\n",
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}
