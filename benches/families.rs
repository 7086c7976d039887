//! `cargo bench --bench families`: every model family trained on the four
//! reference datasets' splits (`tests/fixtures/datasets`), beside
//! scikit-learn's equivalent estimator on the same data
//! (`benches/sklearn_families.py`, run as a subprocess). Prints one table;
//! BENCHMARKS.md records the figures. Nothing here is asserted.
//!
//! Per (family, dataset): the median wall time of `learn::fit_model` over
//! `EDGELOOP_BENCH_REPS` fits (default 5) with `ModelConfig::default()`
//! (forest `n_jobs = 2`); the holdout score of the last fit on the test split
//! (`learn::select::score`: accuracy, or R² for regression); the peak of live
//! heap bytes above the level before the fit (the largest over the fits)
//! and the allocations of one fit, from a counting global allocator.
//! `EDGELOOP_BENCH_BLAS_THREADS` (default 2) is passed to the Python side.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use edgeloop::config::ModelConfig;
use edgeloop::ingest::csv_file::read_labelled_csv;
use edgeloop::learn::select::{score, Metric};
use edgeloop::learn::{fit_model, offline, Dataset, Family, Task};

/// Counts allocations and tracks live and peak live heap bytes.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grow(bytes: u64) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        grow(layout.size() as u64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        grow(layout.size() as u64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // Counted as the new block allocated before the old one is freed: a
        // moving realloc holds both for a moment.
        grow(new_size as u64);
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one (family, dataset) measured, either side.
#[derive(Debug, Clone, Default)]
struct Measured {
    fit_s: f64,
    score: Option<f64>,
    peak_bytes: Option<u64>,
    /// scikit-learn only: resident set growth of a fresh process.
    rss_bytes: Option<u64>,
    allocs: Option<u64>,
}

fn load(root: &Path, dataset: &str, split: &str, task: Task) -> Dataset {
    let path = root
        .join("tests/fixtures/datasets")
        .join(format!("{dataset}_{split}.csv"));
    let csv = read_labelled_csv(&path, "label", &[]).unwrap_or_else(|e| panic!("{e}"));
    offline::dataset(&csv, task)
}

fn measure(
    family: Family,
    cfg: &ModelConfig,
    train: &Dataset,
    test: &Dataset,
    reps: usize,
) -> Measured {
    let features: Vec<String> = (0..train.n_features).map(|i| format!("f{i}")).collect();
    let metric = Metric::default_for(train.task);
    let (mut times, mut peak, mut allocs, mut last) = (vec![], 0u64, 0u64, None);
    for _ in 0..reps {
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let a0 = ALLOCS.load(Relaxed);
        let t = Instant::now();
        let model = fit_model(family, cfg, train, &features, None, &|| false)
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        times.push(t.elapsed().as_secs_f64());
        allocs = ALLOCS.load(Relaxed) - a0;
        peak = peak.max(PEAK.load(Relaxed).saturating_sub(before));
        last = Some(model);
    }
    times.sort_by(f64::total_cmp);
    Measured {
        fit_s: times[times.len() / 2],
        score: last.and_then(|m| score(&m, test, metric)),
        peak_bytes: Some(peak),
        rss_bytes: None,
        allocs: Some(allocs),
    }
}

/// scikit-learn's figures by (family, dataset), or why there are none.
fn sklearn(
    root: &Path,
    reps: usize,
    blas_threads: &str,
) -> Result<(String, Vec<(String, String, Measured)>), String> {
    let out = Command::new("python3")
        .arg(root.join("benches/sklearn_families.py"))
        .args(["--reps", &reps.to_string(), "--blas-threads", blas_threads])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("python3 did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 benches/sklearn_families.py failed ({})",
            out.status
        ));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("its output is not JSON: {e}"))?;
    let version = format!(
        "scikit-learn {}, numpy {}, BLAS threads {}",
        doc["sklearn_version"].as_str().unwrap_or("?"),
        doc["numpy_version"].as_str().unwrap_or("?"),
        doc["blas_threads"]
    );
    let rows = doc["results"]
        .as_array()
        .ok_or("no results")?
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                s("family"),
                s("dataset"),
                Measured {
                    fit_s: r["fit_s"].as_f64().unwrap_or(f64::NAN),
                    score: r["score"].as_f64(),
                    peak_bytes: r["peak_traced_bytes"].as_u64(),
                    rss_bytes: r["peak_rss_bytes"].as_u64(),
                    allocs: None,
                },
            )
        })
        .collect();
    Ok((version, rows))
}

fn ms(s: f64) -> String {
    if s < 0.1 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("–".into(), |b| format!("{:.2}", b as f64 / 1048576.0))
}

fn score4(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.4}"))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reps: usize = std::env::var("EDGELOOP_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let blas_threads = std::env::var("EDGELOOP_BENCH_BLAS_THREADS").unwrap_or_else(|_| "2".into());
    let mut cfg = ModelConfig::default();
    cfg.forest.n_jobs = 2;

    let classifiers = [
        Family::Logistic,
        Family::Mlp,
        Family::Tree,
        Family::Forest,
        Family::Svm,
    ];
    let regressors = [
        Family::Linear,
        Family::Ridge,
        Family::Mlp,
        Family::Tree,
        Family::Forest,
    ];
    let cases: Vec<(Family, &str, Task)> = ["occupancy", "gas12"]
        .iter()
        .flat_map(|d| {
            classifiers
                .iter()
                .map(move |&f| (f, *d, Task::Classification))
        })
        .chain(
            regressors
                .iter()
                .map(|&f| (f, "air_quality", Task::Regression)),
        )
        .collect();

    let mut ours = vec![];
    for &(family, dataset, task) in &cases {
        let (train, test) = (
            load(root, dataset, "train", task),
            load(root, dataset, "test", task),
        );
        let m = measure(family, &cfg, &train, &test, reps);
        eprintln!("edgeloop {family} {dataset}: {}", ms(m.fit_s));
        ours.push(m);
    }

    let theirs = sklearn(root, reps, &blas_threads);
    match &theirs {
        Ok((version, _)) => {
            println!("edgeloop release build vs {version}; median of {reps} fits\n")
        }
        Err(why) => println!(
            "scikit-learn not measured: {why}; edgeloop's figures only (median of {reps} fits)\n"
        ),
    }
    println!(
        "| family | dataset | edgeloop | sklearn | ratio | edgeloop score | sklearn score | edgeloop peak MiB | sklearn peak MiB (traced) | sklearn ΔRSS MiB | edgeloop allocations |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (&(family, dataset, _), m) in cases.iter().zip(&ours) {
        let other = theirs.as_ref().ok().and_then(|(_, rows)| {
            rows.iter()
                .find(|(f, d, _)| f == family.name() && d == dataset)
                .map(|(_, _, m)| m.clone())
        });
        let o = other.clone().unwrap_or_default();
        let (sk_time, ratio) = match &other {
            Some(o) => (ms(o.fit_s), format!("{:.2}", m.fit_s / o.fit_s)),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {family} | {dataset} | {} | {sk_time} | {ratio} | {} | {} | {} | {} | {} | {} |",
            ms(m.fit_s),
            score4(m.score),
            score4(o.score),
            mib(m.peak_bytes),
            mib(o.peak_bytes),
            mib(o.rss_bytes),
            m.allocs.map_or("–".into(), |a| a.to_string()),
        );
    }
}
