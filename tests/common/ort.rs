//! onnxruntime (Python, installed by `.ci/run`) on an ONNX model and rows,
//! through `tests/fixtures/trees_family/run_ort.py`. Include with
//! `#[path = "common/ort.rs"] mod ort;`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// onnxruntime's outputs for `onnx` on `x` (`[n, nf]`), by output name.
pub fn run_onnxruntime(onnx: &[u8], x: &[f32], nf: usize) -> serde_json::Map<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let (model, rows, out) = (
        dir.path().join("model.onnx"),
        dir.path().join("rows.csv"),
        dir.path().join("out.json"),
    );
    std::fs::write(&model, onnx).unwrap();
    let text: String = x
        .chunks_exact(nf)
        .map(|r| {
            let bits: Vec<String> = r.iter().map(|v| v.to_bits().to_string()).collect();
            bits.join(",") + "\n"
        })
        .collect();
    std::fs::write(&rows, text).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trees_family/run_ort.py");
    let run = Command::new("python3")
        .args([&script, &model, &rows, &out])
        .output()
        .expect("python3 runs; the README's test command, tests/run.sh, sets it up");
    assert!(
        run.status.success(),
        "{script:?} failed ({}): {}\nThe Python reference packages (numpy, onnxruntime) are \
         missing? The README's test command, tests/run.sh, installs them in target/pyenv.",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    v["outputs"].as_object().unwrap().clone()
}
