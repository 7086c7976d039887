//! `edgeloop bench ingest --quick --json` runs end to end: every row and
//! field is reported and every message is consumed exactly once by both the
//! daemon and the bare subscriber. Timings are not asserted (BENCHMARKS.md
//! keeps them).
#![cfg(feature = "embedded-broker")]

use std::process::Command;

#[test]
fn bench_ingest_quick_reports_every_field_and_complete_counts() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["bench", "ingest", "--quick", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n: u64 = 5_000;
    assert_eq!(v["messages"], n);
    assert_eq!(v["quick"], true);
    assert_eq!(v["goal"], 0.9);
    for key in [
        "rate",
        "publisher_inflight",
        "subscriber_inflight",
        "timeout_s",
        "idle_s",
        "mosquitto",
    ] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["broker"].as_str().unwrap().to_string(),
                r["row"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("embedded", "steady"),
            ("embedded", "backlog"),
            ("mosquitto", "steady"),
            ("mosquitto", "backlog"),
        ]
        .map(|(b, r)| (b.to_string(), r.to_string()))
    );
    // The harness's tests need mosquitto installed (tests/common); so does
    // this one.
    assert!(v["mosquitto"].is_string(), "mosquitto not found");
    for r in rows {
        let row = format!("{} {}", r["broker"], r["row"]);
        assert_eq!(r["status"], "ok", "{row}: {r:#}");
        assert_eq!(r["messages"], n, "{row}");
        assert!(r["meaning"].as_str().unwrap().len() > 20, "{row}");
        for key in ["ratio", "meets_goal", "broker_dropped"] {
            assert!(r.get(key).is_some(), "{row}: {key} missing");
        }
        assert_eq!(r["broker_dropped"], false, "{row}");
        // The store path alone, on the same messages: each stored once, in
        // commits of the compiled-in store.batch_size.
        let so = &r["store_only"];
        assert_eq!(so["stored_total"], n, "{row}: {so}");
        let batch = so["batch_size"].as_u64().unwrap();
        assert_eq!(batch, 2000, "{row}: {so}");
        assert_eq!(so["commits"], n.div_ceil(batch), "{row}: {so}");
        assert!(so["msg_s"].as_f64().unwrap() > 0.0, "{row}: {so}");
        let (d, b) = (&r["daemon"], &r["bare"]);
        for c in [d, b] {
            for key in ["msg_s", "seconds", "consumed_first", "publish_msg_s"] {
                assert!(c.get(key).is_some(), "{row}: {key} missing in {c}");
            }
            assert_eq!(c["status"], "ok", "{row}");
            assert_eq!(c["consumed"], n, "{row}: {c}");
            assert_eq!(c["published"], n, "{row}: every message acknowledged");
        }
        // Stored exactly once: the store holds every message and no more.
        assert_eq!(d["stored_total"], n, "{row}: {d}");
        for key in [
            "received",
            "duplicates",
            "commits",
            "log_warnings",
            "last_warning",
        ] {
            assert!(d.get(key).is_some(), "{row}: {key} missing");
        }
        assert!(d["commits"].as_u64().unwrap() > 0, "{row}");
        assert!(d["threads_max"].as_u64().unwrap() > 0, "{row}");
        assert!(d["peak_rss_kib"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(b["missing"], 0, "{row}: {b}");
        for c in [d, b] {
            let (cpu, per) = (c["cpu_s"].as_f64(), c["cpu_us_per_msg"].as_f64());
            assert!(cpu.unwrap() > 0.0, "{row}: {c}");
            // serde_json's default float parsing may be one ulp off.
            let want = cpu.unwrap() * 1e6 / n as f64;
            assert!((per.unwrap() - want).abs() <= 1e-9 * want, "{row}: {c}");
        }
        assert!(b.get("duplicates").is_some(), "{row}");
    }
}
