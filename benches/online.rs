//! `cargo bench --bench online`: each online family (`learn::online`) against
//! River's on the same streams, in one run: prequential accuracy, rows per
//! second and peak memory. Prints a table; BENCHMARKS.md records it. Nothing
//! here is asserted (`tests/online.rs` holds the accuracy to River's).
//!
//! Streams: River's generated SEA, Agrawal and RandomRBFDrift
//! (`tests/fixtures/online`), UCI gas sensor drift batches 1–6, 8, 9 in order
//! (`data/gas_sensor_drift`), UCI Occupancy `datatraining.txt`. Features go
//! through `f32`, as stored samples do. Each learner starts empty and, for
//! each row in order, predicts then learns; the randomised ones with seed 42
//! (River's too). River's side is `benches/river_online.py`, run with
//! `$EDGELOOP_PYTHON`, else `target/pyenv/bin/python3` (made by
//! `tests/run.sh --setup`), else `python3`.
//!
//! Regression: `hoeffding_tree` and `arf` as online regression families
//! (`OnlineRegression`, River's `StandardScaler() | HoeffdingTreeRegressor()`
//! and `... | ARFRegressor(seed=42)`) on River's FriedmanDrift
//! (`tests/fixtures/online/friedman_drift.csv`) and UCI Air Quality
//! (`tests/fixtures/datasets/air_quality_train.csv`, missing values
//! included): prequential MAE and R² over every row, rows/s, peak memory.
//! `ONLINE_BENCH=classification` or `regression` runs only that part (both
//! sides).
//!
//! Memory: a counting global allocator tracks live heap bytes; the column is
//! the largest rise over the live level before the run (the model and what
//! learning allocates; the stream is loaded before). River's is the
//! `tracemalloc` peak of a second run (its Python objects).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use edgeloop::learn::online::{OnlineClassifier, OnlineFamily, OnlineRegression, OnlineRegressor};

struct Counting;
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size() as u64, Relaxed) + layout.size() as u64;
        PEAK.fetch_max(live, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GAS_CLASSES: [&str; 6] = [
    "Acetaldehyde",
    "Acetone",
    "Ammonia",
    "Ethanol",
    "Ethylene",
    "Toluene",
];

struct Stream {
    name: &'static str,
    xs: Vec<Vec<f64>>,
    ys: Vec<usize>,
}

fn f32v(v: &str) -> f64 {
    f64::from(v.trim().parse::<f32>().expect("number"))
}

fn generated(root: &Path, name: &'static str) -> Stream {
    let text = std::fs::read_to_string(root.join(format!("tests/fixtures/online/{name}.csv")))
        .expect("tests/fixtures/online (gen_online.py)");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        xs.push(f[..f.len() - 1].iter().map(|v| f32v(v)).collect());
        ys.push(f[f.len() - 1].parse().expect("label"));
    }
    Stream { name, xs, ys }
}

fn gas(root: &Path) -> Stream {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for b in [1, 2, 3, 4, 5, 6, 8, 9] {
        let text =
            std::fs::read_to_string(root.join(format!("data/gas_sensor_drift/batch{b}.dat")))
                .expect("data/gas_sensor_drift");
        for line in text.lines() {
            let f: Vec<&str> = line.trim().split(',').collect();
            ys.push(GAS_CLASSES.iter().position(|g| *g == f[0]).expect("gas"));
            xs.push(f[2..].iter().map(|v| f32v(v)).collect());
        }
    }
    Stream {
        name: "gas",
        xs,
        ys,
    }
}

fn occupancy(root: &Path) -> Stream {
    let text = std::fs::read_to_string(root.join("data/occupancy_uci/datatraining.txt"))
        .expect("data/occupancy_uci");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let f = &f[f.len() - 7..];
        xs.push(f[1..6].iter().map(|v| f32v(v)).collect());
        ys.push(f[6].trim().parse().expect("Occupancy"));
    }
    Stream {
        name: "occupancy",
        xs,
        ys,
    }
}

struct Ours {
    accuracy: f64,
    seconds: f64,
    peak_bytes: u64,
}

fn run(stream: &Stream, family: OnlineFamily) -> Ours {
    let n_classes = stream.ys.iter().max().map_or(0, |m| m + 1);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let started = Instant::now();
    let mut model = family.new_model(stream.xs[0].len(), Some(n_classes), 42);
    let (mut hits, mut scored) = (0u64, 0u64);
    for (x, &y) in stream.xs.iter().zip(&stream.ys) {
        if let Some(p) = model.predict_one(x).expect("width") {
            scored += 1;
            hits += u64::from(p == y);
        }
        model.learn_one(x, y).expect("learn");
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_bytes = PEAK.load(Relaxed).saturating_sub(base);
    drop(model);
    Ours {
        accuracy: hits as f64 / scored.max(1) as f64,
        seconds,
        peak_bytes,
    }
}

/// A regression CSV: features then `label`; an empty field is missing.
fn regression_stream(root: &Path, file: &str) -> (Vec<Vec<f64>>, Vec<f64>) {
    let text = std::fs::read_to_string(root.join(file)).expect(file);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        xs.push(
            f[..f.len() - 1]
                .iter()
                .map(|v| if v.is_empty() { f64::NAN } else { f32v(v) })
                .collect(),
        );
        ys.push(f[f.len() - 1].parse().expect("label"));
    }
    (xs, ys)
}

struct OursRegression {
    mae: f64,
    r2: f64,
    seconds: f64,
    peak_bytes: u64,
}

fn run_regression(xs: &[Vec<f64>], ys: &[f64], family: OnlineFamily) -> OursRegression {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let started = Instant::now();
    let mut model = OnlineRegression::new(family, xs[0].len(), 42).expect("a regressor");
    let mut preds = Vec::with_capacity(ys.len());
    for (x, &y) in xs.iter().zip(ys) {
        preds.push(model.predict_one(x).expect("width"));
        model.learn_one(x, y).expect("learn");
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_bytes = PEAK.load(Relaxed).saturating_sub(base);
    drop(model);
    let n = ys.len() as f64;
    let mean = ys.iter().sum::<f64>() / n;
    let mae = ys
        .iter()
        .zip(&preds)
        .map(|(y, p)| (y - p).abs())
        .sum::<f64>()
        / n;
    let sse: f64 = ys.iter().zip(&preds).map(|(y, p)| (y - p) * (y - p)).sum();
    let sst: f64 = ys.iter().map(|y| (y - mean) * (y - mean)).sum();
    OursRegression {
        mae,
        r2: 1.0 - sse / sst,
        seconds,
        peak_bytes,
    }
}

fn python(root: &Path) -> String {
    if let Ok(p) = std::env::var("EDGELOOP_PYTHON") {
        return p;
    }
    let venv = root.join("target/pyenv/bin/python3");
    if venv.exists() {
        return venv.display().to_string();
    }
    "python3".into()
}

fn mib(b: f64) -> String {
    format!("{:.2}", b / (1024.0 * 1024.0))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let part = std::env::var("ONLINE_BENCH").unwrap_or_else(|_| "all".into());
    let streams = if part == "regression" {
        Vec::new()
    } else {
        vec![
            generated(root, "sea"),
            generated(root, "agrawal"),
            generated(root, "rbf_drift"),
            gas(root),
            occupancy(root),
        ]
    };
    let mut ours = Vec::new();
    for s in &streams {
        for family in OnlineFamily::ALL {
            ours.push((s.name, family, s.ys.len(), run(s, family)));
        }
    }
    let regression_streams = if part == "classification" {
        Vec::new()
    } else {
        vec![
            (
                "friedman_drift",
                regression_stream(root, "tests/fixtures/online/friedman_drift.csv"),
            ),
            (
                "air_quality",
                regression_stream(root, "tests/fixtures/datasets/air_quality_train.csv"),
            ),
        ]
    };
    let mut ours_regression = Vec::new();
    for (name, (xs, ys)) in &regression_streams {
        for family in [OnlineFamily::HoeffdingTree, OnlineFamily::Arf] {
            ours_regression.push((*name, family, ys.len(), run_regression(xs, ys, family)));
        }
    }
    let py = python(root);
    let out = std::process::Command::new(&py)
        .arg("benches/river_online.py")
        .current_dir(root)
        .output();
    let river: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "{py} benches/river_online.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!(
                "{py}: {e}; River's columns left empty (tests/run.sh --setup makes target/pyenv)"
            );
            None
        }
    };
    let find = |stream: &str, family: &str| -> Option<&serde_json::Value> {
        river.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| r["stream"] == stream && r["family"] == family && r.get("task").is_none())
    };
    let find_regression = |stream: &str, family: &str| -> Option<&serde_json::Value> {
        river.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| r["stream"] == stream && r["family"] == family && r["task"] == "regression")
    };
    if let Some(v) = river.as_ref().and_then(|r| r["river_version"].as_str()) {
        println!("River {v}");
    }
    println!(
        "| stream | rows | family | edgeloop accuracy | River accuracy | edgeloop rows/s | River rows/s | speed-up | edgeloop peak MiB | River peak MiB (traced) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (stream, family, rows, o) in &ours {
        let r = find(stream, family.name());
        let r_acc = r.and_then(|r| r["accuracy"].as_f64());
        let r_secs = r.and_then(|r| r["seconds"].as_f64());
        let r_peak = r.and_then(|r| r["peak_traced_bytes"].as_f64());
        let ours_rate = *rows as f64 / o.seconds;
        println!(
            "| {stream} | {rows} | {family} | {:.4} | {} | {:.0} | {} | {} | {} | {} |",
            o.accuracy,
            r_acc.map_or("-".into(), |a| format!("{a:.4}")),
            ours_rate,
            r_secs.map_or("-".into(), |s| format!("{:.0}", *rows as f64 / s)),
            r_secs.map_or("-".into(), |s| format!("{:.0}x", s / o.seconds)),
            mib(o.peak_bytes as f64),
            r_peak.map_or("-".into(), mib),
        );
    }
    if ours_regression.is_empty() {
        return;
    }
    println!(
        "\n| stream | rows | family (regression) | edgeloop MAE | River MAE | edgeloop R² | River R² | edgeloop rows/s | River rows/s | speed-up | edgeloop peak MiB | River peak MiB (traced) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (stream, family, rows, o) in &ours_regression {
        let r = find_regression(stream, family.name());
        let num = |k: &str| r.and_then(|r| r[k].as_f64());
        let r_secs = num("seconds");
        println!(
            "| {stream} | {rows} | {family} | {:.4} | {} | {:.4} | {} | {:.0} | {} | {} | {} | {} |",
            o.mae,
            num("mae").map_or("-".into(), |a| format!("{a:.4}")),
            o.r2,
            num("r2").map_or("-".into(), |a| format!("{a:.4}")),
            *rows as f64 / o.seconds,
            r_secs.map_or("-".into(), |s| format!("{:.0}", *rows as f64 / s)),
            r_secs.map_or("-".into(), |s| format!("{:.0}x", s / o.seconds)),
            mib(o.peak_bytes as f64),
            num("peak_traced_bytes").map_or("-".into(), mib),
        );
    }
}
