//! `edgeloop bench footprint`: what this build costs on a board.
//!
//! Measured, never asserted (BENCHMARKS.md keeps the numbers):
//! - stripped binary size of the cross builds (`target/<triple>/release/edgeloop`,
//!   stripped as a copy with the cross `*-strip` when it is installed) and of
//!   this binary;
//! - time from spawn to ready: `READY=1` on a `NOTIFY_SOCKET` the bench
//!   listens on (sd_notify(3)), and the first `/healthz` answer;
//! - resident memory (`VmRSS`, peak `VmHWM` from `/proc/PID/status`, KiB)
//!   idle, and while ingesting 5,000 QoS 1 messages per second through the
//!   embedded broker for 10 s;
//! - peak resident memory (`ru_maxrss` of wait4(2), KiB) of `edgeloop train`
//!   on a generated CSV of 100,000 labelled rows.
//!
//! Every process is this binary (`std::env::current_exe()`) on a temporary
//! store; nothing outside the temporary directory is touched.
//!
//! [`ingest`]: `edgeloop bench ingest`, the daemon's ingest throughput
//! against a bare QoS 1 subscriber on the same broker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod ingest;

/// What [`footprint`] measures with.
#[derive(Debug, Clone)]
pub struct FootprintOptions {
    /// The edgeloop binary to spawn (normally `current_exe()`).
    pub binary: PathBuf,
    /// Cargo's target directory, where the cross builds lie.
    pub target_dir: PathBuf,
    /// Short runs (1 s of ingest, 5,000 training rows): checks the command.
    pub quick: bool,
}

/// `$CARGO_TARGET_DIR`, else `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

/// One binary's size, bytes.
#[derive(Debug, Clone, Serialize)]
pub struct BinarySize {
    pub target: String,
    pub path: String,
    /// `ok`, `not built`, or why it was not stripped.
    pub status: String,
    pub bytes: Option<u64>,
    pub stripped_bytes: Option<u64>,
}

/// Resident memory, KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak so far.
    pub hwm_kib: u64,
}

/// The ingest run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    /// Messages per second asked.
    pub rate: u64,
    pub seconds: f64,
    /// Messages published and acknowledged by the broker.
    pub published: u64,
    /// Samples the daemon had stored at the end (`/v1/stats`).
    pub stored: u64,
    /// Largest `VmRSS` sampled every 100 ms during the run, KiB.
    pub max_rss_kib: u64,
    /// `VmRSS` and `VmHWM` at the end.
    pub end: Rss,
}

/// The training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRun {
    pub samples: usize,
    pub features: usize,
    pub family: String,
    pub seconds: f64,
    /// Peak resident memory of the `edgeloop train` process, KiB.
    pub peak_rss_kib: u64,
}

/// Everything `edgeloop bench footprint` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub quick: bool,
    pub binaries: Vec<BinarySize>,
    /// Spawn to `READY=1`, ms.
    pub ready_ms: Option<f64>,
    /// Spawn to the first `/healthz` answer, ms.
    pub healthz_ms: f64,
    /// 2 s after ready, with no traffic.
    pub idle: Rss,
    pub ingest: IngestRun,
    pub training: TrainRun,
}

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench: {what}: {reason}")]
    Failed { what: String, reason: String },
}

fn failed(what: &str, reason: impl std::fmt::Display) -> BenchError {
    BenchError::Failed {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Runs every measurement; see the module documentation.
///
/// # Errors
/// [`BenchError`] when the daemon does not start or answer, or training fails.
pub fn footprint(opts: &FootprintOptions) -> Result<Footprint, BenchError> {
    let mut binaries = cross_binaries(&opts.target_dir);
    binaries.push(binary_size("host", &opts.binary, "strip"));
    let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
    let (mut daemon, ready_ms, healthz_ms, http, mqtt_port) =
        start_daemon(&opts.binary, dir.path())?;
    let pid = daemon.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss(pid).ok_or_else(|| failed("idle memory", "cannot read /proc/PID/status"))?;
    let ingest = ingest(pid, http, mqtt_port, if opts.quick { 1.0 } else { 10.0 });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let ingest = ingest?;
    let training = train(
        &opts.binary,
        dir.path(),
        if opts.quick { 5_000 } else { 100_000 },
    )?;
    Ok(Footprint {
        quick: opts.quick,
        binaries,
        ready_ms,
        healthz_ms,
        idle,
        ingest,
        training,
    })
}

/// The cross builds another step makes (`cross build --release --target T`).
fn cross_binaries(target_dir: &Path) -> Vec<BinarySize> {
    let candidates = [
        ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu-strip"),
        ("aarch64-unknown-linux-musl", "aarch64-linux-gnu-strip"),
        ("armv7-unknown-linux-gnueabihf", "arm-linux-gnueabihf-strip"),
        (
            "armv7-unknown-linux-musleabihf",
            "arm-linux-gnueabihf-strip",
        ),
    ];
    let mut out = Vec::new();
    for arch in ["aarch64", "armv7"] {
        let found: Vec<BinarySize> = candidates
            .iter()
            .filter(|(t, _)| t.starts_with(arch))
            .map(|(t, strip)| (t, target_dir.join(t).join("release/edgeloop"), strip))
            .filter(|(_, p, _)| p.exists())
            .map(|(t, p, strip)| binary_size(t, &p, strip))
            .collect();
        if found.is_empty() {
            out.push(BinarySize {
                target: arch.into(),
                path: target_dir
                    .join(format!("{arch}-*/release/edgeloop"))
                    .display()
                    .to_string(),
                status: "not built".into(),
                bytes: None,
                stripped_bytes: None,
            });
        }
        out.extend(found);
    }
    out
}

/// Size of `path`, and of a copy stripped with `strip_tool`.
fn binary_size(target: &str, path: &Path, strip_tool: &str) -> BinarySize {
    let bytes = std::fs::metadata(path).ok().map(|m| m.len());
    let mut status = "ok".to_string();
    let stripped_bytes = (|| {
        let dir = tempfile::tempdir().ok()?;
        let copy = dir.path().join("edgeloop");
        std::fs::copy(path, &copy).ok()?;
        match Command::new(strip_tool).arg(&copy).status() {
            Ok(s) if s.success() => std::fs::metadata(&copy).ok().map(|m| m.len()),
            Ok(s) => {
                status = format!("{strip_tool} failed: {s}");
                None
            }
            Err(_) => {
                status = format!("{strip_tool} not installed; size unstripped");
                None
            }
        }
    })();
    BinarySize {
        target: target.into(),
        path: path.display().to_string(),
        status,
        bytes,
        stripped_bytes,
    }
}

/// `VmRSS` and `VmHWM` of `pid`.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Rss {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("free port", e))
}

/// Spawns the daemon (embedded broker, default pipeline) and waits for
/// `READY=1` and `/healthz`.
fn start_daemon(
    binary: &Path,
    dir: &Path,
) -> Result<(Child, Option<f64>, f64, SocketAddr, u16), BenchError> {
    let (http_port, mqtt_port) = (free_port()?, free_port()?);
    let conf = dir.join("edgeloop.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\npath = '{}'\n[mqtt]\nbroker = 'embedded'\nembedded_listen = '127.0.0.1:{mqtt_port}'\n\
             client_id = 'bench'\n[http]\nlisten = '127.0.0.1:{http_port}'\n",
            dir.join("edgeloop.redb").display()
        ),
    )
    .map_err(|e| failed("writing the config", e))?;
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)
        .map_err(|e| failed("notify socket", e))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| failed("notify socket", e))?;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed("spawning the daemon", e))?;
    let (mut ready_ms, mut healthz_ms) = (None, None);
    let mut buf = [0u8; 4096];
    while ready_ms.is_none() || healthz_ms.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(failed("daemon start", "not ready after 30 s"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed("daemon start", format!("exited: {status}")));
        }
        if ready_ms.is_none() {
            if let Ok(n) = socket.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    ready_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        if healthz_ms.is_none() && http_get(http, "/healthz").is_some() {
            healthz_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((
        child,
        ready_ms,
        healthz_ms.unwrap_or_default(),
        http,
        mqtt_port,
    ))
}

/// A plain HTTP/1.1 GET; the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))?
}

/// Publishes `rate` unlabelled readings per second (QoS 1, distinct
/// timestamps) for `seconds`, sampling the daemon's memory every 100 ms.
fn ingest(
    pid: u32,
    http: SocketAddr,
    mqtt_port: u16,
    seconds: f64,
) -> Result<IngestRun, BenchError> {
    const RATE: u64 = 5_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("runtime", e))?;
    let total = (RATE as f64 * seconds) as u64;
    let (published, max_rss_kib, elapsed) = runtime.block_on(async move {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut opts = MqttOptions::new("footprint-pub", "127.0.0.1", mqtt_port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let poller = tokio::spawn({
            let acked = acked.clone();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        let base = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        let mut rng = fastrand::Rng::with_seed(7);
        let started = Instant::now();
        let mut max_rss = 0;
        let mut last_sample = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = RATE / 100;
        let mut sent = 0u64;
        while sent < total {
            tick.tick().await;
            // Catch up to the schedule if a tick was late.
            let due = ((started.elapsed().as_secs_f64() * RATE as f64) as u64 + per_tick).min(total);
            while sent < due {
                let ts = base + chrono::Duration::seconds(sent as i64);
                let payload = format!(
                    r#"{{"Date":"{}","Temperature":{:.2},"Humidity":{:.2},"Light":{:.1},"CO2":{:.1},"HumidityRatio":{:.5}}}"#,
                    ts.format("%Y-%m-%d %H:%M:%S"),
                    19.0 + 4.0 * rng.f64(),
                    20.0 + 20.0 * rng.f64(),
                    600.0 * rng.f64(),
                    400.0 + 800.0 * rng.f64(),
                    0.003 + 0.003 * rng.f64()
                );
                if client
                    .publish(format!("sensors/d{}/occupancy", sent % 10), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            if last_sample.elapsed() >= Duration::from_millis(100) {
                max_rss = max_rss.max(rss(pid).map_or(0, |r| r.rss_kib));
                last_sample = Instant::now();
            }
        }
        let until = Instant::now() + Duration::from_secs(30);
        while acked.load(std::sync::atomic::Ordering::Relaxed) < sent && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            max_rss = max_rss.max(rss(pid).map_or(0, |r| r.rss_kib));
        }
        let elapsed = started.elapsed().as_secs_f64();
        poller.abort();
        (acked.load(std::sync::atomic::Ordering::Relaxed), max_rss, elapsed)
    });
    // Let the last batch commit.
    let mut stored = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        stored = http_get(http, "/v1/stats")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["samples_stored"].as_u64())
            .unwrap_or(stored);
        if stored >= published {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = rss(pid).ok_or_else(|| failed("ingest memory", "daemon gone"))?;
    Ok(IngestRun {
        rate: RATE,
        seconds: elapsed,
        published,
        stored,
        max_rss_kib: max_rss_kib.max(end.rss_kib),
        end,
    })
}

/// `edgeloop train` on `samples` generated rows (5 features, a label from a
/// noisy linear rule); peak RSS from wait4(2).
fn train(binary: &Path, dir: &Path, samples: usize) -> Result<TrainRun, BenchError> {
    let csv = dir.join("train.csv");
    let mut out = String::with_capacity(samples * 48);
    out.push_str("f0,f1,f2,f3,f4,label\n");
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..samples {
        let x: Vec<f64> = (0..5).map(|_| rng.f64() * 2.0 - 1.0).collect();
        let score = 1.5 * x[0] - x[1] + 0.5 * x[2] + 0.3 * (rng.f64() - 0.5);
        out.push_str(&format!(
            "{:.4},{:.4},{:.4},{:.4},{:.4},{}\n",
            x[0],
            x[1],
            x[2],
            x[3],
            x[4],
            u8::from(score > 0.0)
        ));
    }
    std::fs::write(&csv, out).map_err(|e| failed("writing the training CSV", e))?;
    let family = "logistic";
    let started = Instant::now();
    let child = Command::new(binary)
        .args([
            "train",
            "--label",
            "label",
            "--task",
            "classification",
            "--family",
            family,
            "--json",
            "--file",
        ])
        .arg(&csv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed("spawning edgeloop train", e))?;
    let (status, peak) = wait_rusage(child).map_err(|e| failed("waiting for edgeloop train", e))?;
    if status != 0 {
        return Err(failed("edgeloop train", format!("exit status {status}")));
    }
    Ok(TrainRun {
        samples,
        features: 5,
        family: family.into(),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: peak,
    })
}

/// Waits for `child` with wait4(2): (exit status, `ru_maxrss` KiB).
fn wait_rusage(child: Child) -> std::io::Result<(i32, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; both pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss.max(0) as u64))
}

/// The report as text.
pub fn render(f: &Footprint) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut s = String::new();
    s.push_str("binary                                 bytes      stripped   status\n");
    for b in &f.binaries {
        s.push_str(&format!(
            "{:<36} {:>10} {:>10}   {}\n",
            b.target,
            b.bytes.map_or("-".into(), |v| v.to_string()),
            b.stripped_bytes.map_or("-".into(), |v| v.to_string()),
            b.status
        ));
    }
    s.push_str(&format!(
        "ready: {} ms (READY=1), {:.1} ms (/healthz)\n",
        f.ready_ms.map_or("-".into(), |v| format!("{v:.1}")),
        f.healthz_ms
    ));
    s.push_str(&format!(
        "idle: VmRSS {:.1} MiB, VmHWM {:.1} MiB\n",
        mib(f.idle.rss_kib),
        mib(f.idle.hwm_kib)
    ));
    s.push_str(&format!(
        "ingest {}/s for {:.1} s: {} acknowledged, {} stored; max VmRSS {:.1} MiB, VmHWM {:.1} MiB\n",
        f.ingest.rate,
        f.ingest.seconds,
        f.ingest.published,
        f.ingest.stored,
        mib(f.ingest.max_rss_kib),
        mib(f.ingest.end.hwm_kib)
    ));
    s.push_str(&format!(
        "train {} samples x {} features ({}): {:.1} s, peak RSS {:.1} MiB\n",
        f.training.samples,
        f.training.features,
        f.training.family,
        f.training.seconds,
        mib(f.training.peak_rss_kib)
    ));
    s
}
