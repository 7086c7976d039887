//! Opening the store after a crash: `cargo bench --bench store_reopen
//! [-- --samples N,M,...]` (BENCHMARKS.md, "Opening the store after a
//! crash").
//!
//! For each size, two stores are written by a child process (this binary
//! again, `EDGELOOP_REOPEN_CHILD` set) in commits of 2,000 samples, which
//! then aborts without closing the store, as a SIGKILL or a power cut
//! leaves it:
//!
//! - `quick`: as edgeloop writes, each commit in redb's quick-repair mode;
//! - `full` (the reference, in the same run): every commit without it, as
//!   edgeloop wrote before (`Store::set_quick_repair(false)`), so the open
//!   runs redb's full repair.
//!
//! Samples: 10 devices, five features of a seeded random walk, a label on
//! every third, distinct digests and timestamps (as the writer stores
//! occupancy readings). Reported per store: the child's write rate
//! (samples/s, the commits' cost of quick repair), the file's size, and the
//! open (`Store::open_observed`): wall seconds, bytes read from the disk
//! (`/proc/self/io` `read_bytes`), whether redb ran its full repair; the
//! first write after it (one sample: the commit that also reads the
//! pipeline's dedup index, every stored sample's digest, from `samples`),
//! wall seconds and bytes read; and the
//! daemon's start on a copy of the same crashed file: `edgeloop run` of
//! `config/edgeloop.toml` (its `occupancy` pipeline, the embedded broker and
//! HTTP on free loopback ports), seconds from spawn to its "edgeloop
//! running." line (the `READY=1` moment). When the process may (root), the
//! page cache is dropped before each open and each start
//! (`/proc/sys/vm/drop_caches`), so they read from the disk as after a power
//! cut; otherwise the column says `warm`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edgeloop::store::{NewSample, RepairObserver, Sample, Store};

const CHILD: &str = "EDGELOOP_REOPEN_CHILD";
const BATCH: u64 = 2_000;

/// A seeded stream of occupancy-like samples (xorshift64*).
struct Samples {
    state: u64,
    walk: [f32; 5],
}

impl Samples {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.max(1),
            walk: [21.0, 27.0, 400.0, 700.0, 0.004],
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn sample(&mut self, i: u64) -> NewSample {
        for (k, w) in self.walk.iter_mut().enumerate() {
            let step = (self.state >> (k * 8) & 0xff) as f32 / 255.0 - 0.5;
            *w += step * [0.05, 0.1, 5.0, 3.0, 0.00005][k];
        }
        let digest = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        NewSample {
            pipeline: "occupancy".into(),
            digest,
            sample: Sample {
                timestamp_ms: 1_700_000_000_000 + i as i64 * 100,
                device: format!("d{}", i % 10),
                features: self.walk.to_vec(),
                label: (i % 3 == 0).then(|| ((i / 97) % 2).to_string()),
            },
            dedup: true,
        }
    }
}

/// The child: writes `n` samples to `path` (`quick` or `full`), prints its
/// write rate, aborts.
fn child(spec: &str) -> ! {
    let mut parts = spec.split(' ');
    let (path, n, mode) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
        parts.next().unwrap(),
    );
    let store = Store::open(Path::new(path)).unwrap();
    store.set_quick_repair(mode == "quick");
    let mut gen = Samples::new(n ^ 0x5EED);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<NewSample> = (i..(i + BATCH).min(n)).map(|j| gen.sample(j)).collect();
        store.append(&batch).unwrap();
        i += BATCH;
    }
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
    std::process::abort();
}

fn read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| {
                    l.strip_prefix("read_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Seconds from spawning the daemon on `store` to its "edgeloop running."
/// line; then stops it (SIGTERM).
fn daemon_start(store: &Path) -> f64 {
    use std::io::BufRead;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/edgeloop.toml");
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["run", "--log-level", "info", "--config"])
        .arg(&config)
        .env("EDGELOOP__STORE__PATH", store)
        .env(
            "EDGELOOP__HTTP__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "EDGELOOP__MQTT__EMBEDDED_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let took = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("edgeloop running.") => {
                break started.elapsed().as_secs_f64();
            }
            Some(_) => {}
            None => panic!("the daemon exited before running: {:?}", child.wait()),
        }
    };
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    // Drain its log so it never blocks on a full pipe while stopping.
    for _ in lines {}
    child.wait().unwrap();
    took
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
    }
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<u64> = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|n| n.replace('_', "").parse().unwrap())
                .collect()
        })
        .unwrap_or_else(|| vec![1_000_000, 4_000_000]);
    let dir =
        tempfile::tempdir_in(std::env::var("EDGELOOP_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .or_else(|_| tempfile::tempdir())
            .unwrap();
    println!("| samples | writes | write rate, samples/s | file MB | cache | open s | read from disk MB | full repair | first write s | its reads MB | daemon start s |");
    println!("|---:|---|---:|---:|---|---:|---:|---|---:|---:|---:|");
    for &n in &sizes {
        for mode in ["quick", "full"] {
            let path = dir.path().join(format!("{n}-{mode}.redb"));
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .env(CHILD, format!("{} {n} {mode}", path.display()))
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&out.status),
                Some(libc::SIGABRT),
                "the writer did not abort: {:?}",
                out.status
            );
            let rate = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let size = std::fs::metadata(&path).unwrap().len();
            let copy = path.with_extension("daemon.redb");
            std::fs::copy(&path, &copy).unwrap();
            let cold = drop_caches();
            let repaired = Arc::new(Mutex::new(false));
            let observe: RepairObserver = {
                let repaired = repaired.clone();
                Arc::new(move |_| *repaired.lock().unwrap() = true)
            };
            let before = read_bytes();
            let t = Instant::now();
            let store = Store::open_observed(&path, observe).unwrap();
            let took = t.elapsed().as_secs_f64();
            let read = read_bytes().saturating_sub(before);
            assert_eq!(store.counts("occupancy").unwrap().samples, n);
            let before = read_bytes();
            let t = Instant::now();
            store.append(&[Samples::new(7).sample(n)]).unwrap();
            let first = t.elapsed().as_secs_f64();
            let first_read = read_bytes().saturating_sub(before);
            drop(store);
            let _ = std::fs::remove_file(&path);
            drop_caches();
            let start = daemon_start(&copy);
            let _ = std::fs::remove_file(&copy);
            println!(
                "| {n} | {} | {rate} | {:.0} | {} | {took:.3} | {:.1} | {} | {first:.3} | {:.1} | {start:.2} |",
                if mode == "quick" {
                    "quick repair (edgeloop)"
                } else {
                    "without (before)"
                },
                size as f64 / 1e6,
                if cold { "dropped" } else { "warm" },
                read as f64 / 1e6,
                if *repaired.lock().unwrap() {
                    "yes"
                } else {
                    "no"
                },
                first_read as f64 / 1e6
            );
        }
    }
}
