//! `cargo bench --bench loop`: speed, allocations, memory and threads of each
//! stage of the loop, on the shipped UCI Occupancy data. Prints a table;
//! BENCHMARKS.md records the figures. Nothing here is asserted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use edgeloop::config::Config;
use edgeloop::ingest::decode::{Decoder, Sample};
use edgeloop::ingest::replay::{self, ReplayOptions};
use edgeloop::learn::{self, Trigger};
use edgeloop::serve::engine::OnnxModel;
use edgeloop::store::{NewSample, Store};
use tokio_util::sync::CancellationToken;

/// Counts allocations and bytes allocated.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64, Duration) {
    let (a, b) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let t = Instant::now();
    let out = f();
    let d = t.elapsed();
    (out, ALLOCS.load(Relaxed) - a, BYTES.load(Relaxed) - b, d)
}

fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn row(name: &str, value: String, note: String) {
    println!("| {name} | {value} | {note} |");
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
    let pipeline = cfg.pipelines[0].clone();
    let opts = |file: &str| ReplayOptions {
        file: root.join("data/occupancy_uci").join(file),
        topic: "sensors/room1/occupancy".into(),
        rate: None,
        host: "127.0.0.1".into(),
        port: 0,
        drop_columns: vec![],
        limit: None,
        client_id: "bench-pub".into(),
        give_up_after: std::time::Duration::from_secs(replay::GIVE_UP_AFTER_S),
    };
    let payloads = replay::csv_payloads(&opts("datatraining.txt")).unwrap();
    let n = payloads.len() as u64;
    println!("| measurement | value | note |\n|---|---|---|");

    // Decoding.
    let decoder = Decoder::new(&pipeline.schema(), 65536);
    let (samples, allocs, bytes, d) = counted(|| {
        payloads
            .iter()
            .map(|p| {
                decoder
                    .decode("sensors/room1/occupancy", p, 0)
                    .sample
                    .unwrap()
            })
            .collect::<Vec<Sample>>()
    });
    row(
        "decode JSON payload → sample",
        format!("{:.0} payloads/s", n as f64 / d.as_secs_f64()),
        format!(
            "{:.1} allocations, {:.0} bytes per payload",
            allocs as f64 / n as f64,
            bytes as f64 / n as f64
        ),
    );

    // Store: durable commits of 100 (what rumqttd's window of 100 allowed
    // per commit before the proxy's relay), 2,000 and 500
    // (`store.batch_size`) samples, each on a fresh store; the last one is
    // kept for the rows below.
    let new_samples = |size: usize| -> Vec<Vec<NewSample>> {
        samples
            .chunks(size)
            .enumerate()
            .map(|(b, chunk)| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, s)| NewSample {
                        pipeline: "occupancy".into(),
                        digest: (b * size + i) as u128,
                        sample: s.clone(),
                        dedup: true,
                    })
                    .collect()
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = None;
    for size in [100, 2000, 500] {
        let path = dir.path().join(format!("b{size}.redb"));
        let s = Store::open(&path).unwrap();
        let batches = new_samples(size);
        let (_, allocs, _, d) = counted(|| {
            for batch in &batches {
                s.append(batch).unwrap();
            }
        });
        let file = std::fs::metadata(&path).unwrap().len();
        row(
            &format!("store append, durable commit per {size} samples"),
            format!("{:.0} samples/s", n as f64 / d.as_secs_f64()),
            format!(
                "{:.2} ms per commit; {:.1} allocations per sample; file {:.1} MiB for {n} samples",
                d.as_secs_f64() * 1e3 / batches.len() as f64,
                allocs as f64 / n as f64,
                file as f64 / 1048576.0
            ),
        );
        store = Some(s);
    }
    let store = store.unwrap();
    let (labelled, _, _, d) = counted(|| store.labelled("occupancy").unwrap());
    row(
        "store scan of labelled samples",
        format!("{:.1} ms", d.as_secs_f64() * 1e3),
        format!("{} samples", labelled.len()),
    );
    let (_, _, _, d) = counted(|| store.enforce_retention("occupancy", 1000, 1000).unwrap());
    row(
        "retention: delete 7143 oldest in chunks of 1000",
        format!("{:.1} ms", d.as_secs_f64() * 1e3),
        String::new(),
    );

    // Training.
    let all: Vec<Sample> = samples.clone();
    let (trained, allocs, bytes, d) = counted(|| {
        learn::train_version(
            &pipeline.settings(),
            &all,
            None,
            1,
            Trigger::Manual,
            None,
            || false,
        )
        .unwrap()
    });
    row(
        "train logistic (holdout fit + refit), 8143 samples × 5 features",
        format!("{:.0} ms", d.as_secs_f64() * 1e3),
        format!(
            "{allocs} allocations, {:.1} MiB allocated; ONNX {} bytes",
            bytes as f64 / 1048576.0,
            trained.onnx.len()
        ),
    );

    // Inference through tract.
    let model = OnnxModel::load(&trained.onnx).unwrap();
    let one = &samples[0].features;
    let mut times: Vec<f64> = (0..2001)
        .map(|_| {
            let t = Instant::now();
            model.predict_proba(one).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let (_, allocs, bytes, _) = counted(|| model.predict_proba(one).unwrap());
    row(
        "tract predict, 1 row",
        format!("p50 {:.1} µs, p99 {:.1} µs", times[1000], times[1980]),
        format!("{allocs} allocations, {bytes} bytes per call"),
    );
    let batch: Vec<f32> = samples
        .iter()
        .take(1000)
        .flat_map(|s| s.features.clone())
        .collect();
    let (_, _, _, d) = counted(|| model.predict_proba(&batch).unwrap());
    row(
        "tract predict, batch of 1000 rows",
        format!("{:.2} ms", d.as_secs_f64() * 1e3),
        format!("{:.2} µs per row", d.as_secs_f64() * 1e3),
    );

    // End to end through the embedded broker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = cfg.clone();
        cfg.store.path = dir.path().join("e.redb");
        cfg.mqtt.embedded_listen = SocketAddr::from(([127, 0, 0, 1], port));
        cfg.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.pipelines[0].model.min_labels = 1_000_000;
        let token = CancellationToken::new();
        let running = edgeloop::daemon::start(cfg, token.clone()).await.unwrap();
        let handle = running.handle.clone();
        let mut o = opts("datatraining.txt");
        o.port = port;
        let t = Instant::now();
        replay::publish_all(&o, payloads.clone(), CancellationToken::new())
            .await
            .unwrap();
        while handle.store.counts("occupancy").unwrap().samples < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let d = t.elapsed();
        let threads = proc_status("Threads:");
        row(
            "ingest end to end (embedded broker, QoS 1, ack after commit)",
            format!("{:.0} messages/s", n as f64 / d.as_secs_f64()),
            format!(
                "{n} messages in {:.2} s; {} commits; process threads {threads}",
                d.as_secs_f64(),
                handle.stats.snapshot().commits
            ),
        );
        drop(handle);
        token.cancel();
        running.wait(Duration::from_secs(10)).await.unwrap();
    });
    row(
        "peak resident memory of this process",
        proc_status("VmHWM:"),
        "all stages above".into(),
    );
    model_cards();
}

/// Reading every stored version's card (what `GET …/models`, `…/versions`
/// and the dashboard's refresh every 5 s do): 50 versions (the default
/// `models.keep_versions`) of a 2 MiB model, distinct random bytes each;
/// each record read whole (`model_versions`, then `get_model` per version:
/// the path before `Store::model_cards`) against `model_cards`, in the
/// same run, five times each, alternating; median time, and allocations
/// and bytes allocated of one read (version listing and cards: the "before"
/// path lists versions as `Store::model_versions` does now, from the cards).
/// After the peak memory row, which it would otherwise raise.
fn model_cards() {
    use edgeloop::store::StoredModel;
    const VERSIONS: u32 = 50;
    const MODEL_BYTES: usize = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cards.redb")).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for v in 1..=VERSIONS {
        let mut onnx = vec![0u8; MODEL_BYTES];
        rng.fill(&mut onnx);
        let card_json = format!(
            "{{\"version\":{v},\"family\":\"random_forest\",\"accuracy\":{:.4}}}",
            rng.f64()
        );
        let m = StoredModel {
            onnx,
            card_json,
            params_json: "{}".into(),
        };
        store.put_model("cards", v, &m, None).unwrap();
    }
    let whole = || {
        let mut n = 0;
        for v in store.model_versions("cards").unwrap() {
            n += store
                .get_model("cards", v)
                .unwrap()
                .unwrap()
                .card_json
                .len();
        }
        n
    };
    let cards = || {
        let cards = store.model_cards("cards").unwrap();
        cards.iter().map(|(_, c)| c.len()).sum::<usize>()
    };
    let (mut t_whole, mut t_cards) = (Vec::new(), Vec::new());
    let (mut a_whole, mut a_cards) = ((0, 0), (0, 0));
    for _ in 0..5 {
        let (n1, allocs, bytes, d) = counted(whole);
        t_whole.push(d);
        a_whole = (allocs, bytes);
        let (n2, allocs, bytes, d) = counted(cards);
        t_cards.push(d);
        a_cards = (allocs, bytes);
        assert_eq!(n1, n2, "the same cards both ways");
    }
    let median = |t: &mut Vec<Duration>| {
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1e3
    };
    for (name, t, (allocs, bytes)) in [
        ("each record whole (before)", &mut t_whole, a_whole),
        ("Store::model_cards", &mut t_cards, a_cards),
    ] {
        row(
            &format!("cards of {VERSIONS} stored versions, 2 MiB model each: {name}"),
            format!("{:.2} ms", median(t)),
            format!(
                "{allocs} allocations, {:.1} KiB allocated per read",
                bytes as f64 / 1024.0
            ),
        );
    }
}
