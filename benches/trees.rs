//! `cargo bench --bench trees`: latency of the 50-tree random forest of the tree-ensemble
//! fixtures (`tests/fixtures/tree_ensemble/rf50_occupancy.onnx`, 5 features) in tract,
//! with edgeloop's operator (`serve::engine::onnx_parser`) and with tract-onnx's own
//! (`tract_onnx::onnx()`), one row and a batch of 64 rows. Prints a table; BENCHMARKS.md
//! records the figures, with onnxruntime's from `tests/fixtures/tree_ensemble/bench_ort.py`.
//! Nothing here is asserted.

use std::time::{Duration, Instant};

use edgeloop::serve::engine::onnx_parser;
use tract_onnx::prelude::*;

fn plan(onnx: tract_onnx::Onnx, path: &std::path::Path, rows: usize) -> Arc<TypedRunnableModel> {
    onnx.model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact([rows, 5]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap()
}

/// p50 and p99 of one call, in µs, over calls that fill about `budget`.
fn latency(plan: &Arc<TypedRunnableModel>, x: &Tensor, budget: Duration) -> (f64, f64, usize) {
    let run = || plan.run(tvec!(x.clone().into_tvalue())).unwrap();
    run();
    let t = Instant::now();
    run();
    let once = t.elapsed().max(Duration::from_nanos(100));
    let n = ((budget.as_secs_f64() / once.as_secs_f64()) as usize).clamp(5, 20001);
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[(n * 99 / 100).min(n - 1)], n)
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("tests/fixtures/tree_ensemble/rf50_occupancy.onnx");
    let data =
        std::fs::read_to_string(root.join("tests/fixtures/datasets/occupancy_test.csv")).unwrap();
    let rows: Vec<f32> = data
        .lines()
        .skip(1)
        .take(64)
        .flat_map(|l| {
            l.split(',')
                .take(5)
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    println!("| operator | rows | p50 | p99 | calls |\n|---|---|---|---|---|");
    for (name, onnx, budget) in [
        ("edgeloop", onnx_parser(), Duration::from_secs(2)),
        (
            "tract-onnx built-in",
            tract_onnx::onnx(),
            Duration::from_secs(4),
        ),
    ] {
        for n in [1usize, 64] {
            let p = plan(onnx.clone(), &path, n);
            let x = Tensor::from_shape(&[n, 5], &rows[..n * 5]).unwrap();
            let (p50, p99, calls) = latency(&p, &x, budget);
            println!("| {name} | {n} | {p50:.1} µs | {p99:.1} µs | {calls} |");
        }
    }
}
