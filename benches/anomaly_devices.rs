//! `cargo bench --bench anomaly_devices`: memory and CPU of the anomaly
//! rules kept per device (`[pipelines.anomaly]`, `learn::anomaly::Scorer`;
//! issue 18), on seeded readings of 5 features at the defaults. Prints
//! tables; BENCHMARKS.md records the figures. Nothing here is asserted.
//!
//! Memory: a counting global allocator keeps the live heap bytes; a
//! device's bytes are the growth of the live heap over `DEVICES` devices
//! fed the same number of readings each, divided by `DEVICES`, after the
//! pipeline's trees and their threshold were filled by readings without a
//! device (so that only the devices' rules and the map's entries grow).
//! Measured at the stages of a device's rules: the level rule's warm-up
//! (200 readings), just before it retires (1,249: its sorted histories at
//! their largest), after (1,250), and with the residual limit's 5,000
//! z-scores held (6,000). The trees and their threshold are measured on
//! their own (`ScaledHalfSpaceTrees`, `Threshold`).
//!
//! CPU: nanoseconds per `score_then_learn` (the median of `REPS` runs,
//! alternated, and their range), the reference in the same run: readings
//! without a device (one state, the scorer's path before issue 18) against
//! readings of one device, of 100 devices interleaved, and of 300 devices
//! over `max_devices` 256 (each new reading a new device: eviction). Timed
//! during the rules' warm-up (the first 1,250 readings of each stream, the
//! level rule on) and in the steady state (each stream past 6,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use edgeloop::learn::anomaly::{AnomalyConfig, ScaledHalfSpaceTrees, Scorer, Threshold};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DEVICES: usize = 50;
const REPS: usize = 5;
const FEATURES: usize = 5;

/// Seeded readings around a level per device: AR(1)-free noise, enough
/// for the rules' arithmetic (sorted inserts, quantiles) to do real work.
struct Readings {
    rng: fastrand::Rng,
}

impl Readings {
    fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn next(&mut self, device: usize) -> [f64; FEATURES] {
        let level = device as f64 * 3.0;
        std::array::from_fn(|j| level + j as f64 * 10.0 + self.rng.f64() - 0.5)
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|d| format!("sensors-{d:04}")).collect()
}

fn scorer(max_devices: usize) -> Scorer {
    let cfg = AnomalyConfig {
        max_devices,
        ..AnomalyConfig::default()
    };
    let features: Vec<String> = (0..FEATURES).map(|j| format!("f{j}")).collect();
    Scorer::new(&cfg, &features)
}

/// Bytes per device with each of `DEVICES` devices fed `readings`.
fn bytes_per_device(readings: usize) -> f64 {
    let mut s = scorer(AnomalyConfig::default().max_devices);
    let mut r = Readings::new(7);
    // The pipeline's trees and their threshold, filled.
    for _ in 0..6_000 {
        s.score_then_learn_f64(None, &r.next(0));
    }
    let devices = names(DEVICES);
    let before = LIVE.load(Relaxed);
    for _ in 0..readings {
        for (d, name) in devices.iter().enumerate() {
            s.score_then_learn_f64(Some(name), &r.next(d));
        }
    }
    let after = LIVE.load(Relaxed);
    std::hint::black_box(&s);
    (after - before) as f64 / DEVICES as f64
}

/// Nanoseconds per reading of `streams` streams (`None`: readings without
/// a device), each fed `skip` readings untimed, then `timed` readings
/// each, interleaved.
fn ns_per_reading(streams: Option<usize>, max_devices: usize, skip: usize, timed: usize) -> f64 {
    let mut s = scorer(max_devices);
    let mut r = Readings::new(11);
    let devices = names(streams.unwrap_or(1));
    let mut feed = |s: &mut Scorer, rounds: usize| {
        for _ in 0..rounds {
            for (d, name) in devices.iter().enumerate() {
                let x = r.next(d);
                let device = streams.map(|_| name.as_str());
                std::hint::black_box(s.score_then_learn_f64(device, &x));
            }
        }
    };
    feed(&mut s, skip);
    let t = Instant::now();
    feed(&mut s, timed);
    t.elapsed().as_nanos() as f64 / (timed * devices.len()) as f64
}

fn median_range(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    println!("| a device's rules, 5 features, after N of its readings | bytes per device |");
    println!("|---|---|");
    for n in [200, 1_249, 1_250, 6_000] {
        println!("| {n} | {:.0} |", bytes_per_device(n));
    }
    // The pipeline's trees (drawn at the first reading) and their
    // threshold with its 5,000 scores held.
    let cfg = AnomalyConfig::default();
    let before = LIVE.load(Relaxed);
    let mut trees = ScaledHalfSpaceTrees::new(cfg.trees, cfg.height, cfg.window, cfg.seed);
    trees.learn_one(&[0.5; FEATURES]);
    let trees_bytes = LIVE.load(Relaxed) - before;
    let before = LIVE.load(Relaxed);
    let mut threshold = Threshold::new(cfg.quantile, cfg.calibration, cfg.history)
        .with_persistence(cfg.persistence, cfg.persistence_window);
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..6_000 {
        threshold.observe(rng.f64());
    }
    let threshold_bytes = LIVE.load(Relaxed) - before;
    std::hint::black_box((&trees, &threshold));
    println!(
        "\n| the pipeline's trees (10 × height 8) | their threshold (5,000 scores) |\n|---|---|\n| {trees_bytes} | {threshold_bytes} |"
    );

    let max = cfg.max_devices;
    // Name, streams, rounds skipped before the steady state (the
    // 300-device case forgets a device at every reading: it never leaves
    // the warm-up).
    let cases: [(&str, Option<usize>, usize); 4] = [
        ("no device (one state, the path before)", None, 6_000),
        ("1 device", Some(1), 6_000),
        ("100 devices interleaved", Some(100), 6_000),
        ("300 devices, max_devices 256 (eviction)", Some(300), 10),
    ];
    println!(
        "\n| readings | warm-up: ns per reading, median (range) of {REPS} | steady: ns per reading |"
    );
    println!("|---|---|---|");
    let mut warm = vec![Vec::new(); cases.len()];
    let mut steady = vec![Vec::new(); cases.len()];
    for _ in 0..REPS {
        for (k, &(_, streams, skip)) in cases.iter().enumerate() {
            warm[k].push(ns_per_reading(streams, max, 0, 1_250));
            steady[k].push(ns_per_reading(streams, max, skip, 2_000));
        }
    }
    for (k, (name, _, _)) in cases.iter().enumerate() {
        println!(
            "| {name} | {} | {} |",
            median_range(warm[k].clone()),
            median_range(steady[k].clone())
        );
    }
}
