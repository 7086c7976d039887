//! The binary as a process, as systemd runs it: `READY=1`, `WATCHDOG=1` and
//! `STOPPING=1` on a `NOTIFY_SOCKET`, SIGTERM draining within the deadline
//! with nothing acknowledged lost, SIGHUP reloading `[daemon]` and naming the
//! keys that need a restart, and the log formats (journald text, JSON).

mod common;

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(90);

/// The daemon process with its stderr lines and sd_notify datagrams
/// collected.
struct Daemon {
    child: Child,
    conf: PathBuf,
    http: std::net::SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    notes: Arc<Mutex<Vec<String>>>,
    _socket_dir: tempfile::TempDir,
}

/// A config in `dir`: store there, the broker, HTTP on `http_port`;
/// `store_extra` goes into `[store]`, `extra` at the end.
fn write_config(
    dir: &Path,
    broker_port: u16,
    http_port: u16,
    client: &str,
    store_extra: &str,
    extra: &str,
) -> PathBuf {
    let conf = dir.join("edgeloop.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\n{store_extra}path = '{}'\n[mqtt]\nbroker = 'mqtt://127.0.0.1:{broker_port}'\nclient_id = '{client}'\n\
             reconnect_min_ms = 50\n[http]\nlisten = '127.0.0.1:{http_port}'\n{extra}",
            dir.join("edgeloop.redb").display(),
        ),
    )
    .unwrap();
    conf
}

impl Daemon {
    fn spawn(conf: &Path, http_port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_with(conf, http_port, args, env, false)
    }

    /// As [`Daemon::spawn`]; `mdwe`: under PR_SET_MDWE (see
    /// [`deny_write_execute`]).
    fn spawn_with(
        conf: &Path,
        http_port: u16,
        args: &[&str],
        env: &[(&str, &str)],
        mdwe: bool,
    ) -> Self {
        let socket_dir = tempfile::tempdir().unwrap();
        let socket_path = socket_dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeloop"));
        cmd.args(args)
            .args(["run", "--config"])
            .arg(conf)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if mdwe {
            deny_write_execute(&mut cmd);
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let logs = logs.clone();
            move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let notes = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let notes = notes.clone();
            move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    notes.lock().unwrap().extend(text.lines().map(String::from));
                }
            }
        });
        Self {
            child,
            conf: conf.to_path_buf(),
            http: std::net::SocketAddr::from(([127, 0, 0, 1], http_port)),
            logs,
            notes,
            _socket_dir: socket_dir,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    async fn wait_note(&self, note: &str) {
        let note = note.to_string();
        wait_until(WAIT, &format!("sd_notify {note}"), || {
            self.notes().contains(&note)
        })
        .await;
    }

    async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path` → JSON.
    async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut c = edgeloop::demo::HttpClient::connect(self.http).await.ok()?;
        let (status, body) = c.request("GET", path, None).await.ok()?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// Waits for the exit; (status, seconds waited).
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, f64) {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, started.elapsed().as_secs_f64());
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM mid-replay: the daemon says READY=1 once it serves, pings the
/// watchdog, says STOPPING=1, logs what it waits for, exits 0 within the
/// deadline; started again, it holds every message the publisher had
/// acknowledged (the broker kept the rest in the daemon's session), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_the_deadline_and_loses_nothing_acknowledged() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let conf = write_config(
        dir.path(),
        mosquitto.port,
        http_port,
        &client_id("term"),
        "",
        "[daemon]\nshutdown_timeout_s = 8\n",
    );
    let mut daemon = Daemon::spawn(&conf, http_port, &[], &[("WATCHDOG_USEC", "200000")]);
    daemon.wait_note("READY=1").await;
    // READY comes after HTTP is bound and the registry restored.
    assert!(
        daemon.get("/healthz").await.is_some(),
        "READY=1 before HTTP answers"
    );
    while daemon
        .get("/healthz")
        .await
        .map(|h| h["mqtt_subscribed"] == true)
        != Some(true)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Watchdog: pings every WatchdogSec/2 = 100 ms while healthy.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pings = daemon.notes().iter().filter(|n| *n == "WATCHDOG=1").count();
    assert!(pings >= 3, "{pings} watchdog pings in 600 ms");

    let mut opts = replay_opts("datatraining.txt", mosquitto.port, Some(3000));
    opts.rate = Some(2000.0);
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let publisher = tokio::spawn({
        let opts = opts.clone();
        async move {
            edgeloop::ingest::replay::publish_all(
                &opts,
                payloads,
                tokio_util::sync::CancellationToken::new(),
            )
            .await
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = daemon
            .get("/v1/stats")
            .await
            .and_then(|s| s["samples_stored"].as_u64())
            .unwrap_or(0);
        if stored >= 500 {
            break;
        }
        assert!(Instant::now() < until, "{stored} of 500 stored in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!publisher.is_finished(), "SIGTERM must land mid-replay");
    daemon.signal(libc::SIGTERM);
    let (status, seconds) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(
        seconds < 8.0,
        "exited after {seconds:.1} s; the deadline is 8 s"
    );
    let notes = daemon.notes();
    assert!(notes.iter().any(|n| n == "STOPPING=1"), "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("STATUS=Serving HTTP on")),
        "{notes:?}"
    );
    let logs = daemon.logs();
    let waiting = logs
        .iter()
        .find(|l| l.contains("Waiting for the components to stop."))
        .unwrap_or_else(|| panic!("{logs:#?}"));
    assert!(waiting.contains("deadline_ms=8000"), "{waiting}");
    // Which components are still running at that instant is a matter of
    // scheduling (the writer may already have committed its last batch);
    // the line names those that are.
    const COMPONENTS: [&str; 8] = [
        "mqtt-source",
        "writer",
        "predictor",
        "publisher",
        "learner",
        "http",
        "health",
        "broker-drain",
    ];
    assert!(
        COMPONENTS
            .iter()
            .any(|c| waiting.contains(&format!("\"{c}\""))),
        "names what it waits for: {waiting}"
    );
    assert!(logs.iter().any(|l| l.contains("Stopped cleanly.")));
    let report = publisher.await.unwrap().unwrap();
    assert_eq!(report.acknowledged, 3000);

    let mut again = Daemon::spawn(&daemon.conf, http_port, &[], &[]);
    drop(daemon);
    again.wait_note("READY=1").await;
    let until = Instant::now() + WAIT;
    let mut stored = 0;
    while Instant::now() < until {
        stored = again
            .get("/v1/pipelines")
            .await
            .and_then(|p| p["pipelines"][0]["samples"].as_u64())
            .unwrap_or(0);
        if stored >= 3000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_now = again
        .get("/v1/pipelines")
        .await
        .and_then(|p| p["pipelines"][0]["samples"].as_u64());
    assert_eq!(stored, 3000);
    assert_eq!(
        stored_now,
        Some(3000),
        "no duplicate after redelivery settles"
    );
    again.signal(libc::SIGINT);
    let (status, _) = again.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "SIGINT exits 0: {status:?}");
}

/// SIGHUP with a changed `[daemon]` key applies it (the shutdown deadline
/// SIGTERM then logs) and names a changed restart-only key; JSON logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_daemon_keys_and_names_restart_keys() {
    let mut mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let client = client_id("hup");
    let broker_port = mosquitto.port;
    let config = |store_extra: &str, extra: &str| {
        write_config(
            dir.path(),
            broker_port,
            http_port,
            &client,
            store_extra,
            extra,
        )
    };
    let conf = config("", "[daemon]\nshutdown_timeout_s = 9\n");
    let mut daemon = Daemon::spawn(&conf, http_port, &["--log-format", "json"], &[]);
    daemon.wait_note("READY=1").await;
    // An unknown key: refused, the running configuration stays.
    config("", "[daemon]\nshutdown_timeout_s = 4\nbogus = 1\n");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_log("the refused reload", |l| {
            l.contains("configuration not reloaded")
        })
        .await;
    config(
        "batch_size = 7\n",
        "[daemon]\nshutdown_timeout_s = 4\nlog_filter = 'info,edgeloop=debug'\n",
    );
    daemon.signal(libc::SIGHUP);
    let applied = daemon
        .wait_log("the reload", |l| {
            l.contains("SIGHUP: configuration reloaded.")
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&applied).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(
        v["fields"]["applied"],
        "[\"daemon.log_filter\", \"daemon.shutdown_timeout_s\"]"
    );
    let restart = daemon
        .wait_log("the restart keys", |l| l.contains("need a restart"))
        .await;
    let v: serde_json::Value = serde_json::from_str(&restart).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["needs_restart"], "[\"store.batch_size\"]");
    // The new filter took effect: after a broker restart the source logs
    // its new subscription at DEBUG.
    assert!(!daemon
        .logs()
        .iter()
        .any(|l| l.contains("\"level\":\"DEBUG\"")));
    mosquitto.restart_losing_sessions();
    let debug = daemon
        .wait_log("a DEBUG line", |l| l.contains("MQTT subscribed."))
        .await;
    assert!(debug.contains("\"level\":\"DEBUG\""), "{debug}");
    daemon.signal(libc::SIGTERM);
    let (status, _) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success());
    let waiting = daemon
        .wait_log("the shutdown log", |l| {
            l.contains("Waiting for the components to stop.")
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&waiting).unwrap();
    assert_eq!(v["fields"]["deadline_ms"], 4000, "the reloaded deadline");
    // Every stderr line is one JSON object.
    for l in daemon.logs() {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

/// Under systemd (JOURNAL_STREAM set) text logs carry no timestamp and no
/// colour: journald adds its own; the level is text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_text_logs_have_no_timestamp_and_no_colour() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let conf = write_config(
        dir.path(),
        mosquitto.port,
        http_port,
        &client_id("jrn"),
        "",
        "",
    );
    let mut daemon = Daemon::spawn(&conf, http_port, &[], &[("JOURNAL_STREAM", "8:12345")]);
    daemon.wait_note("READY=1").await;
    let line = daemon
        .wait_log("the running line", |l| l.contains("edgeloop running."))
        .await;
    assert!(line.trim_start().starts_with("INFO "), "{line}");
    daemon.signal(libc::SIGTERM);
    let (status, _) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success());
    for l in daemon.logs() {
        assert!(!l.contains('\u{1b}'), "colour code: {l:?}");
        assert!(
            !l.starts_with(|c: char| c.is_ascii_digit()),
            "timestamp: {l}"
        );
    }
}

/// A component that cannot start stops the process with a non-zero exit and
/// the reason (systemd's Restart=on-failure then restarts it).
#[test]
fn taken_http_port_exits_non_zero_with_the_reason() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let conf = write_config(dir.path(), mosquitto.port, port, &client_id("port"), "", "");
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["run", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("HTTP: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

/// PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+, prctl(2)): the
/// process (and what it executes) can map no memory writable and executable
/// and make no mapping executable, as `MemoryDenyWriteExecute=yes` in the
/// unit does with seccomp.
fn deny_write_execute(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The unit's `MemoryDenyWriteExecute=yes` holds: under the same
/// restriction the daemon starts, trains a model at 500 labels, verifies it
/// with tract and predicts over HTTP. A control (Python mapping RWX memory)
/// shows the restriction is in force here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_and_serves_with_memory_deny_write_execute() {
    let mut control = Command::new("python3");
    control.args([
        "-c",
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)",
    ]);
    deny_write_execute(&mut control);
    match control.output() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("SKIPPED: this kernel has no PR_SET_MDWE (Linux < 6.3)");
            return;
        }
        Err(e) => panic!("control: {e}"),
        Ok(out) => assert!(
            !out.status.success(),
            "MDWE not in force: RWX mapping allowed"
        ),
    }
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let conf = write_config(
        dir.path(),
        mosquitto.port,
        http_port,
        &client_id("mdwe"),
        "",
        "",
    );
    let mut daemon = Daemon::spawn_with(&conf, http_port, &[], &[], true);
    daemon.wait_note("READY=1").await;
    while daemon
        .get("/healthz")
        .await
        .map(|h| h["mqtt_subscribed"] == true)
        != Some(true)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opts = replay_opts("datatraining.txt", mosquitto.port, Some(600));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    let until = Instant::now() + WAIT;
    while daemon
        .get("/v1/pipelines")
        .await
        .and_then(|p| p["pipelines"][0]["serving_version"].as_u64())
        != Some(1)
    {
        assert!(
            Instant::now() < until,
            "no model; logs:\n{}",
            daemon.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = serde_json::json!({"rows": [{"Temperature": 23.0, "Humidity": 27.0, "Light": 430.0, "CO2": 710.0, "HumidityRatio": 0.0047}]});
    let mut c = edgeloop::demo::HttpClient::connect(daemon.http)
        .await
        .unwrap();
    let (status, body) = c
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(serde_json::to_vec(&row).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(1));
    daemon.signal(libc::SIGTERM);
    let (status, _) = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// Past `daemon.shutdown_timeout_s` the process exits non-zero naming what
/// did not finish: here HTTP, held open by a request whose body never
/// arrives (axum's graceful shutdown waits for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_deadline_exits_non_zero_naming_what_did_not_finish() {
    use std::io::Write;
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let conf = write_config(
        dir.path(),
        mosquitto.port,
        http_port,
        &client_id("late"),
        "",
        "[daemon]\nshutdown_timeout_s = 1\n",
    );
    let mut daemon = Daemon::spawn(&conf, http_port, &[], &[]);
    daemon.wait_note("READY=1").await;
    let mut stuck = std::net::TcpStream::connect(daemon.http).unwrap();
    stuck
        .write_all(
            b"POST /v1/pipelines/occupancy/predict HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"rows\":",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(libc::SIGTERM);
    let (status, seconds) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        (1.0..5.0).contains(&seconds),
        "exited after {seconds:.1} s; the deadline is 1 s"
    );
    let logs = daemon.logs().join("\n");
    assert!(
        logs.contains("shutdown did not finish within 1s: still running: http"),
        "{logs}"
    );
    assert!(logs.contains("Shutdown deadline passed"), "{logs}");
    drop(stuck);
}

/// `edgeloop bench footprint --quick --json` runs end to end and reports
/// every field (the numbers themselves go to BENCHMARKS.md, not here).
#[test]
fn bench_footprint_quick_reports_every_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["bench", "footprint", "--quick", "--json"])
        .env("CARGO_TARGET_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets: Vec<&str> = v["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        ["aarch64", "armv7", "host"],
        "no cross build in an empty target dir"
    );
    assert_eq!(v["binaries"][0]["status"], "not built");
    assert!(v["binaries"][2]["bytes"].as_u64().unwrap() > 0);
    assert!(v["ready_ms"].as_f64().unwrap() > 0.0);
    assert!(v["idle"]["rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(v["ingest"]["rate"], 5000);
    assert_eq!(v["ingest"]["published"], 5000);
    assert_eq!(
        v["ingest"]["stored"], 5000,
        "every acknowledged message stored"
    );
    assert_eq!(v["training"]["samples"], 5000);
    assert!(v["training"]["peak_rss_kib"].as_u64().unwrap() > 0);
}

/// `edgeloop run` with no `--config`, as a user who is not root (`nobody`
/// when the test runs as root): the store goes to the user's XDG state
/// directory, created on the way; the embedded broker takes readings; SIGTERM
/// stops it cleanly. Only the two ports come from the environment (the
/// defaults, 1883 and 8080, may be taken on a test machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_a_config_as_a_normal_user_stores_readings_and_stops_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let home = tempfile::tempdir().unwrap();
    // The binary, where `nobody` may run it.
    let bin = home.path().join("edgeloop");
    std::fs::copy(env!("CARGO_BIN_EXE_edgeloop"), &bin).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    let user_home = home.path().join("home");
    std::fs::create_dir(&user_home).unwrap();
    const NOBODY: u32 = 65534;
    if root {
        std::os::unix::fs::chown(&user_home, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let (mqtt_port, http_port) = (free_port(), free_port());
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &user_home)
        .env(
            "EDGELOOP__MQTT__EMBEDDED_LISTEN",
            format!("127.0.0.1:{mqtt_port}"),
        )
        .env("EDGELOOP__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if root {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                logs.lock().unwrap().push(line);
            }
        });
    }
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let stats = || async move {
        let mut c = edgeloop::demo::HttpClient::connect(http).await.ok()?;
        let (status, body) = c.request("GET", "/v1/stats", None).await.ok()?;
        (status == 200).then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())?
    };
    let until = Instant::now() + WAIT;
    while stats().await.is_none() {
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < until,
            "the daemon did not come up: {:#?}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 200 readings of the default pipeline (topic sensors/+/occupancy).
    let opts = replay_opts("datatest.txt", mqtt_port, Some(200));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    loop {
        let stored = stats()
            .await
            .and_then(|s| s["samples_stored"].as_u64())
            .unwrap_or(0);
        if stored == 200 {
            break;
        }
        assert!(Instant::now() < until, "{stored} of 200 stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {:#?}", logs.lock().unwrap());
    let store = user_home.join(".local/state/edgeloop/edgeloop.redb");
    assert!(store.is_file(), "no store at {}", store.display());
    if root {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata(store.parent().unwrap()).unwrap();
        assert_eq!((dir.uid(), dir.mode() & 0o777), (NOBODY, 0o700));
    }
    assert!(logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("Stopped cleanly.")));
    // The running line says where the store is (before, no line named it).
    let named = format!("store={}", store.display());
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("edgeloop running.") && l.contains(&named)),
        "no running line with {named}: {:#?}",
        logs.lock().unwrap()
    );
}
