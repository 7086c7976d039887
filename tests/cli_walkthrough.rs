//! The README's walk-through ("A first hour"), command by command as a user
//! types it: `edgeloop run` with no configuration, a labelled replay (the
//! daemon trains, no predictions), the test period without its labels (one
//! prediction per reading), its labels sent later (late labels, matched to
//! their readings); then `edgeloop models list` within 100 columns (`--wide`:
//! every version) and `edgeloop models history` in local RFC 3339 time.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_edgeloop");
const WAIT: Duration = Duration::from_secs(120);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn edgeloop(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .args(["--log-level", "error"])
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgeloop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn get(rt: &tokio::runtime::Runtime, http: std::net::SocketAddr, path: &str) -> Option<Value> {
    rt.block_on(async {
        let mut c = edgeloop::demo::HttpClient::connect(http).await.ok()?;
        let (status, body) = c.request("GET", path, None).await.ok()?;
        (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    })
}

fn wait_for(
    rt: &tokio::runtime::Runtime,
    http: std::net::SocketAddr,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        let v = get(rt, http, path);
        if let Some(v) = v.as_ref().filter(|v| done(v)) {
            return v.clone();
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readme_walkthrough_trains_predicts_and_takes_late_labels() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (mqtt_port, http_port) = (free_port(), free_port());
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let broker = format!("mqtt://127.0.0.1:{mqtt_port}");
    // `edgeloop run`, no --config; the ports moved off 1883 and 8080.
    let _daemon = Daemon(
        Command::new(BIN)
            .arg("run")
            .env("XDG_STATE_HOME", state.path())
            .env_remove("STATE_DIRECTORY")
            .env(
                "EDGELOOP__MQTT__EMBEDDED_LISTEN",
                format!("127.0.0.1:{mqtt_port}"),
            )
            .env("EDGELOOP__HTTP__LISTEN", http.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&rt, http, "/healthz", "the daemon's subscription", |h| {
        h["mqtt_subscribed"] == true
    });

    // Labelled: stored and trained on, no predictions.
    let out = edgeloop(
        &[
            "replay",
            "--file",
            "data/occupancy_uci/datatraining.txt",
            "--topic",
            "sensors/room1/occupancy",
            "--broker",
            &broker,
        ],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 8143 messages, 8143 acknowledged\n"
    );
    wait_for(
        &rt,
        http,
        "/v1/pipelines",
        "8,143 samples and a model",
        |v| v["pipelines"][0]["samples"] == 8143 && v["pipelines"][0]["serving_version"].is_u64(),
    );
    let stats = get(&rt, http, "/v1/stats").unwrap();
    assert_eq!(stats["predictions_made"], 0, "labelled readings get none");

    // Unlabelled: one prediction over MQTT per reading.
    let out = edgeloop(
        &[
            "replay",
            "--file",
            "data/occupancy_uci/datatest2.txt",
            "--topic",
            "sensors/room1/occupancy",
            "--drop-column",
            "Occupancy",
            "--broker",
            &broker,
        ],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 9752 messages, 9752 acknowledged\n"
    );
    let stats = wait_for(&rt, http, "/v1/stats", "9,752 predictions", |s| {
        s["predictions_published"].as_u64().unwrap_or(0)
            + s["predictions_dropped"].as_u64().unwrap_or(0)
            >= 9752
    });
    assert_eq!(stats["predictions_published"], 9752, "{stats}");

    // Their labels, later, on the label topic: matched by device and Date.
    edgeloop(
        &[
            "replay",
            "--file",
            "data/occupancy_uci/datatest2.txt",
            "--topic",
            "labels/room1/occupancy",
            "--broker",
            &broker,
        ],
        &[],
    );
    let stats = wait_for(&rt, http, "/v1/stats", "9,752 late labels", |s| {
        s["labels_matched"].as_u64().unwrap_or(0) + s["labels_unmatched"].as_u64().unwrap_or(0)
            >= 9752
    });
    assert_eq!(stats["labels_matched"], 9752, "{stats}");
    assert_eq!(stats["labels_unmatched"], 0, "{stats}");

    // `models list`: within 100 columns; --wide: every version. The
    // learner may still store a version (labels just arrived): the JSON,
    // the table and the wide table are read again until the JSON before
    // and after them agree.
    let url = format!("http://{http}");
    let list = |extra: &[&str]| {
        let mut args = vec!["models", "list", "--pipeline", "occupancy", "--url", &url];
        args.extend_from_slice(extra);
        String::from_utf8(edgeloop(&args, &[]).stdout).unwrap()
    };
    let listing = || {
        let models: Value = serde_json::from_str(&list(&["--json"])).unwrap();
        let versions: Vec<u64> = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["version"].as_u64().unwrap())
            .collect();
        (versions, models["serving_version"].as_u64().unwrap())
    };
    let mut tries = 0;
    let (versions, serving, table, wide) = loop {
        let before = listing();
        let (table, wide) = (list(&[]), list(&["--wide"]));
        if listing() == before {
            break (before.0, before.1, table, wide);
        }
        tries += 1;
        assert!(tries < 20, "the versions kept changing: {before:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(versions.len() >= 4, "{versions:?}");
    for line in table.lines() {
        assert!(
            line.chars().count() <= 100,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .contains(&format!("v{serving} ")),
        "{table}"
    );
    let header = wide.lines().nth(1).unwrap();
    for v in &versions {
        assert!(header.contains(&format!("v{v} ")), "v{v}: {header}");
    }
    assert!(wide.lines().any(|l| l.chars().count() > 100), "{wide}");
    assert!(table.contains("--wide"), "says what it left out: {table}");

    // `models history`: times in the local zone (here UTC+05:30), RFC 3339.
    let history = |json: bool| {
        let mut args = vec![
            "models",
            "history",
            "--pipeline",
            "occupancy",
            "--url",
            &url,
        ];
        if json {
            args.push("--json");
        }
        String::from_utf8(edgeloop(&args, &[("TZ", "IST-5:30")]).stdout).unwrap()
    };
    let first: Value = serde_json::from_str(&history(true)).unwrap();
    let shown = history(false);
    // The learner may add an event (a training, an alarm) between the two
    // calls: the table holds the events of the first and at most those of
    // a third call, in the same order.
    let after: Value = serde_json::from_str(&history(true)).unwrap();
    let before = first["events"].as_array().unwrap().len();
    let ist = chrono::FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap();
    let events = after["events"].as_array().unwrap();
    assert!(!events.is_empty());
    for (e, line) in events.iter().zip(shown.lines().skip(2)) {
        let at = chrono::DateTime::from_timestamp_millis(e["at_ms"].as_i64().unwrap())
            .unwrap()
            .with_timezone(&ist)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        assert!(at.ends_with("+05:30"), "{at}");
        assert!(line.starts_with(&at), "{line} should start with {at}");
        assert!(line.chars().count() <= 100, "{line}");
    }
    let rows = shown.lines().count() - 2;
    assert!(
        before <= rows && rows <= events.len(),
        "{before}..={}: {shown}",
        events.len()
    );
}

/// `edgeloop models` against an address where no daemon listens says where
/// the address came from and how to give the right one: a newcomer who
/// started the daemon with `--config my.toml` and ran `models list` without
/// it got only "connect 127.0.0.1:8080: Connection refused".
#[test]
fn models_where_no_daemon_listens_say_where_the_address_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("my.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("s.redb").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["models", "list", "--pipeline", "occupancy"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--config", config.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "no edgeloop daemon answers at 127.0.0.1:{port} (`http.listen` of {})",
            config.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("give the daemon's --config, or --url"),
        "{err}"
    );
    let err = run(&["--url", &format!("http://127.0.0.1:{port}")]);
    assert!(
        err.contains(&format!(
            "no edgeloop daemon answers at 127.0.0.1:{port} (--url)"
        )),
        "{err}"
    );
}
