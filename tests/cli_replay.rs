//! `edgeloop replay` gives up, with a clear error, when no broker answers:
//! none listening, one that never sends a CONNACK, one that stops
//! acknowledging; with more rows than its MQTT client queues too, and it
//! stops on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `edgeloop replay` of the first 10 training rows to `port` with
/// `--timeout-s 2`; fails the test if it is still running after 60 s.
fn replay_to(port: u16) -> Output {
    wait_for(spawn_replay(port, 10, 2))
}

/// Starts `edgeloop replay` of the first `limit` training rows to `port`
/// with `--timeout-s timeout_s`.
fn spawn_replay(port: u16, limit: usize, timeout_s: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "replay",
            "--file",
            "data/occupancy_uci/datatraining.txt",
            "--topic",
            "sensors/room1/occupancy",
            "--log-level",
            "error",
        ])
        .args(["--limit", &limit.to_string()])
        .args(["--timeout-s", &timeout_s.to_string()])
        .arg("--broker")
        .arg(format!("mqtt://127.0.0.1:{port}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edgeloop replay")
}

/// The output of `child`; fails the test if it is still running after
/// 60 s.
fn wait_for(mut child: Child) -> Output {
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("edgeloop replay still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stderr_of(out: &Output) -> String {
    assert!(!out.status.success(), "replay must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn gives_up_when_no_broker_listens() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = stderr_of(&replay_to(port));
    assert!(
        err.contains(&format!(
            "gave up after 2 s without an answer: the MQTT broker at 127.0.0.1:{port} could not be reached ("
        )),
        "{err}"
    );
    assert!(err.contains("0 of 10 messages acknowledged"), "{err}");
}

#[test]
fn gives_up_when_the_broker_never_sends_a_connack() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Accept and hold every connection, answering nothing.
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let err = stderr_of(&replay_to(port));
    assert!(
        err.contains(&format!(
            "the MQTT broker at 127.0.0.1:{port} could not be reached"
        )),
        "{err}"
    );
    assert!(err.contains("0 of 10 messages acknowledged"), "{err}");
}

#[test]
fn gives_up_when_the_broker_stops_acknowledging() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                // CONNECT in, CONNACK (session not present, accepted) out,
                // then read every PUBLISH and acknowledge none.
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
                while s.read(&mut buf).unwrap_or(0) > 0 {}
            });
        }
    });
    let err = stderr_of(&replay_to(port));
    assert!(
        err.contains(&format!(
            "gave up after 2 s without an answer: the MQTT broker at 127.0.0.1:{port} stopped acknowledging; 0 of 10 messages acknowledged"
        )),
        "{err}"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// rumqttc's request queue holds 1,000 publishes; beyond, the publisher
/// waits for the event loop to drain it. Before, giving up stopped the
/// event loop and then waited for the publisher: with 2,000 rows and no
/// broker, `--timeout-s 2` ran for ever (measured: still running after 10
/// minutes).
#[test]
fn gives_up_with_more_rows_than_the_client_queues() {
    let port = free_port();
    let err = stderr_of(&wait_for(spawn_replay(port, 2000, 2)));
    assert!(
        err.contains(&format!(
            "gave up after 2 s without an answer: the MQTT broker at 127.0.0.1:{port} could not be reached ("
        )),
        "{err}"
    );
    assert!(err.contains("0 of 2000 messages acknowledged"), "{err}");
}

/// SIGTERM stops a replay that is still waiting for its broker (before, it
/// logged the signal and went on waiting).
#[test]
fn stops_on_sigterm() {
    let port = free_port();
    let child = spawn_replay(port, 2000, 600);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let err = stderr_of(&wait_for(child));
    assert!(
        err.contains("stopped with 0 of 2000 messages acknowledged"),
        "{err}"
    );
}

/// A topic filter given as the topic (`sensors/+/occupancy`, copied from a
/// pipeline's `topics`) is refused before connecting, naming it: the
/// embedded broker closed the connection on each such publish and the
/// replay, reconnecting (each CONNACK an answer), ran for over 10 minutes.
#[test]
fn a_topic_with_a_wildcard_is_refused_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for topic in ["sensors/+/occupancy", "sensors/#", ""] {
        let child = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["replay", "--file", "data/occupancy_uci/datatraining.txt"])
            .args([
                "--topic",
                topic,
                "--timeout-s",
                "30",
                "--log-level",
                "error",
            ])
            .arg("--broker")
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let err = stderr_of(&wait_for(child));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{topic:?}: {err}"
        );
        assert!(
            err.contains(&format!(
                "--topic `{topic}`: a message is published on a topic name, without the wildcards"
            )),
            "{topic:?}: {err}"
        );
    }
}
