//! `cargo bench --features ort --bench engines`: latency of every model of
//! three suites on edgeloop's two engines, tract and onnxruntime through
//! `ort`, measured in one run: the conformance suite
//! (`tests/fixtures/conformance/manifest.json`: skl2onnx, onnxmltools and
//! torch-style graphs; beside onnxruntime in Python, `benches/ort_python.py`,
//! run as a subprocess), forests of 50 to 300 trees (`benches/gen_forests.py`,
//! run first, writing `target/bench-forests/`) and torch's dynamo exports
//! (`tests/fixtures/conformance/torch`). Prints one table; BENCHMARKS.md
//! records the figures. Nothing is asserted.
//!
//! Per (model, engine, batch): the median wall time of one
//! `Session::run_rows` over the calls that fill about `EDGELOOP_BENCH_MS`
//! milliseconds (default 300; at least 5 calls), after one warm-up call, in
//! µs. Batches: one row and 64 rows, cut (or repeated) from the manifest's
//! inputs; a model with a fixed batch axis gets only its own size, one
//! without a batch axis one row. Each call
//! draws a different batch: call `i` starts at row `7 * i` of the manifest's
//! 64 (16 batches in turn), so a single-row figure is not one row's path
//! through the trees repeated. The `ort`
//! column needs the feature `ort` and `ORT_DYLIB_PATH` (the `onnxruntime`
//! wheel's `capi/libonnxruntime.so.*`); without them it reads `-`.
//!
//! Allocations per call: a counting global allocator counts the heap
//! allocations (`alloc` and `realloc` calls) of the timed calls, divided by
//! their number. It sees Rust's heap only: onnxruntime's own C++
//! allocations are not counted, so the `ort` figure is edgeloop's side of
//! the call (inputs, outputs, the `ort` crate's values).
//!
//! Memory of a tract session: the same allocator keeps the bytes live on
//! Rust's heap; "KB at load" is what loading the session left live, "KB
//! held" that plus what the calls so far left live (the plans made for their
//! batch sizes, kept run states). The `ort` session's memory is
//! onnxruntime's, not seen.
//!
//! `EDGELOOP_BENCH_ONLY=a,b`: only the models whose name contains `a` or `b`
//! (and no Python column).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgeloop::serve::engine::{Data, EngineKind, LoadOptions, Named, Session, Tensor};
use serde_json::Value;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance")
}

/// The suites, each a directory with a `manifest.json`: the conformance
/// suite, the forests `benches/gen_forests.py` writes (50-300 trees; run
/// here, skipped when it fails), torch's dynamo exports.
fn suites() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let forests = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("bench-forests");
    let made = Command::new("python3")
        .arg(root.join("benches/gen_forests.py"))
        .arg(&forests)
        .output();
    let mut dirs = vec![suite()];
    match made {
        Ok(o) if o.status.success() => dirs.push(forests),
        Ok(o) => eprintln!(
            "benches/gen_forests.py failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("python3 did not start: {e}"),
    }
    dirs.push(suite().join("torch"));
    dirs
}

/// The manifest input `v` cut or repeated to `n` rows, from row `first`.
fn rows(v: &Value, n: usize, first: usize) -> Tensor {
    let mut shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let per_row: usize = shape[1..].iter().product();
    let data = v["data"].as_array().unwrap();
    let take = |i: usize| &data[(first * per_row + i) % data.len()];
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let m = n * per_row;
    let data = match v["dtype"].as_str().unwrap() {
        "float32" | "float" => Data::F32((0..m).map(|i| f(take(i)) as f32).collect()),
        "float64" | "double" => Data::F64((0..m).map(|i| f(take(i))).collect()),
        "int64" | "int32" | "bool" => Data::I64(
            (0..m)
                .map(|i| {
                    let x = take(i);
                    x.as_i64().or_else(|| x.as_bool().map(i64::from)).unwrap()
                })
                .collect(),
        ),
        "string" => Data::String((0..m).map(|i| take(i).as_str().unwrap().into()).collect()),
        other => panic!("dtype {other}"),
    };
    shape[0] = n;
    Tensor::new(shape, data).unwrap()
}

/// Median µs of one `run_rows` over about `budget`, call `i` on
/// `batches[i % len]`, and the heap allocations per call.
fn median_us(session: &Session, batches: &[Vec<Named>], budget: Duration) -> Option<(f64, f64)> {
    session.run_rows(&batches[0]).ok()?;
    let t = Instant::now();
    session.run_rows(&batches[1 % batches.len()]).ok()?;
    let once = t.elapsed().max(Duration::from_nanos(100));
    let n = ((budget.as_secs_f64() / once.as_secs_f64()) as usize).clamp(5, 50_001);
    let mut times: Vec<f64> = Vec::with_capacity(n);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..n {
        let inputs = &batches[i % batches.len()];
        let t = Instant::now();
        let out = session.run_rows(inputs).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        drop(out);
    }
    let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    times.sort_by(f64::total_cmp);
    Some((times[n / 2], allocations))
}

fn python() -> BTreeMap<String, BTreeMap<String, f64>> {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ort_python.py"))
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_default(),
        Ok(o) => {
            eprintln!(
                "benches/ort_python.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            BTreeMap::new()
        }
        Err(e) => {
            eprintln!("python3 did not start: {e}");
            BTreeMap::new()
        }
    }
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("EDGELOOP_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let only: Vec<String> = std::env::var("EDGELOOP_BENCH_ONLY")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    // The Python reference covers the whole conformance suite: skipped
    // when only some models are asked for.
    let py = if only.is_empty() {
        python()
    } else {
        BTreeMap::new()
    };
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map_or_else(|| "-".into(), |(a, b)| format!("{:.2}", a / b))
    };
    println!(
        "| model | rows | tract µs | ort µs | tract / ort | onnxruntime (Python) µs | tract / onnxruntime (Python) | tract allocs | ort allocs | tract KB at load | tract KB held |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for dir in suites() {
        let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
            continue;
        };
        let manifest: Value = serde_json::from_str(&text).unwrap();
        for m in manifest["models"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap_or_default();
            if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
                continue;
            }
            bench_model(&dir, m, &py, budget, &fmt, &ratio);
        }
    }
}

fn bench_model(
    dir: &Path,
    m: &Value,
    py: &BTreeMap<String, BTreeMap<String, f64>>,
    budget: Duration,
    fmt: &dyn Fn(Option<f64>) -> String,
    ratio: &dyn Fn(Option<f64>, Option<f64>) -> String,
) {
    let name = m["name"].as_str().unwrap();
    let path = dir.join(m["file"].as_str().unwrap());
    let first = &m["inputs"][0];
    let shape = first["shape"].as_array().unwrap();
    let options = LoadOptions {
        input_width: (shape.len() == 2).then(|| shape[1].as_u64().unwrap() as usize),
        ort_library: None,
    };
    let load = |kind| Session::load_file(&path, kind, &options).ok();
    let live = || LIVE.load(Ordering::Relaxed);
    let before = live();
    let tract = load(EngineKind::Tract);
    let at_load = live() - before;
    let mut held = at_load;
    let ort = load(EngineKind::Ort);
    // A fixed batch axis: that size only; no batch axis (declared rank
    // below the manifest's): one row a run.
    let fixed = tract.as_ref().and_then(|s| {
        let dims = s.inputs().first()?.dims.as_ref()?;
        if dims.len() < shape.len() {
            return Some(1);
        }
        dims.first().copied().flatten()
    });
    let sizes = fixed.map_or(vec![1, 64], |b| vec![b]);
    for n in sizes {
        let batches: Vec<Vec<Named>> = (0..16)
            .map(|b| {
                m["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| Named::new(i["name"].as_str().unwrap(), rows(i, n, 7 * b)))
                    .collect()
            })
            .collect();
        let before = live();
        let t = tract.as_ref().and_then(|s| median_us(s, &batches, budget));
        held += live() - before;
        let o = ort.as_ref().and_then(|s| median_us(s, &batches, budget));
        let (t, t_allocs) = (t.map(|t| t.0), t.map(|t| t.1));
        let (o, o_allocs) = (o.map(|o| o.0), o.map(|o| o.1));
        let p = (dir == suite())
            .then(|| py.get(name).and_then(|r| r.get(&n.to_string())).copied())
            .flatten();
        println!(
            "| {name} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(t),
            fmt(o),
            ratio(t, o),
            fmt(p),
            ratio(t, p),
            fmt(t_allocs),
            fmt(o_allocs),
            fmt(tract.as_ref().map(|_| at_load as f64 / 1024.0)),
            fmt(tract.as_ref().map(|_| held as f64 / 1024.0))
        );
    }
}
