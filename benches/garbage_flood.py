#!/usr/bin/env python3
"""Floods a daemon's pipeline topics with payloads it must reject, then
publishes valid readings, and samples the daemon's resident memory
(/proc/PID/status: VmRSS, VmHWM) while it does, for BENCHMARKS.md
("Garbage on the pipeline's topics").

    python3 benches/garbage_flood.py --port 1883 --pid $(pidof edgeloop) \\
        --count 4000 --huge 200 --valid 1000 --seed 5

Each garbage message goes QoS 1 to ``sensors/dev{k}/occupancy`` (k among
``--devices``), one of, in a seeded draw:
- invalid JSON text (``{"Temperature": 2`` cut short, 20-200 bytes);
- random bytes, 1-64 KiB (``--small-max``);
- ``--huge`` payloads of random bytes between 1 MiB and ``--huge-max``
  (default 4,194,000: just under mosquitto's and the embedded broker's
  ``message_size_limit`` of 4 MiB with the topic), spread over the run.
Then ``--valid`` readings (five UCI Occupancy features, ``Date`` one second
apart, labelled) on ``dev0``. Prints one JSON line per sample of memory
(every ``--every`` seconds) and a last one with the peak; the counters are
read by the caller from /metrics. Seeded: the same arguments send the same
messages. Needs paho-mqtt 2.
"""
import argparse
import json
import random
import sys
import threading
import time

import paho.mqtt.client as mqtt


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=4000, help="small garbage messages")
    ap.add_argument("--huge", type=int, default=200, help="huge garbage messages")
    ap.add_argument("--huge-max", type=int, default=4_194_000)
    ap.add_argument("--small-max", type=int, default=65536)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--valid", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--settle", type=float, default=5.0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    messages = []
    kinds = ["text"] * a.count
    for i in range(a.count):
        kinds[i] = "text" if rng.random() < 0.5 else "bytes"
    kinds += ["huge"] * a.huge
    rng.shuffle(kinds)
    for kind in kinds:
        topic = f"sensors/dev{rng.randrange(a.devices)}/occupancy"
        if kind == "text":
            body = ('{"Temperature": 2' + "1" * rng.randrange(1, 180)).encode()
        elif kind == "bytes":
            body = rng.randbytes(rng.randrange(1024, a.small_max + 1))
        else:
            body = rng.randbytes(rng.randrange(1 << 20, a.huge_max + 1))
        messages.append((topic, body))
    start = 1420070400 + a.seed * 10_000_000
    valid = []
    for i in range(a.valid):
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + i))
        light = rng.choice([0.0, 430.0])
        valid.append(
            (
                "sensors/dev0/occupancy",
                json.dumps(
                    {
                        "Date": t,
                        "Temperature": round(rng.uniform(20, 23), 2),
                        "Humidity": round(rng.uniform(27, 28), 2),
                        "Light": light,
                        "CO2": round(rng.uniform(500, 800), 1),
                        "HumidityRatio": 0.0048,
                        "Occupancy": 1 if light else 0,
                    }
                ).encode(),
            )
        )

    peak = {"VmRSS": 0}
    stop = threading.Event()

    def sample():
        t0 = time.time()
        while not stop.is_set():
            s = status(a.pid)
            peak["VmRSS"] = max(peak["VmRSS"], s["VmRSS"])
            print(json.dumps({"t": round(time.time() - t0, 1), **s}), flush=True)
            stop.wait(a.every)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()

    def publish(batch, tag):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"garbage-{a.seed}-{tag}")
        c.max_inflight_messages_set(20)
        c.max_queued_messages_set(0)
        c.connect(a.host, a.port)
        c.loop_start()
        pending = [c.publish(t, b, qos=1) for t, b in batch]
        for p in pending:
            p.wait_for_publish(timeout=600)
        c.disconnect()
        c.loop_stop()

    t0 = time.time()
    threads = [
        threading.Thread(target=publish, args=(messages[i :: a.publishers], i))
        for i in range(a.publishers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    garbage_s = time.time() - t0
    publish(valid, "valid")
    time.sleep(a.settle)
    stop.set()
    watcher.join()
    s = status(a.pid)
    print(
        json.dumps(
            {
                "done": True,
                "garbage": len(messages),
                "garbage_bytes": sum(len(b) for _, b in messages),
                "valid": len(valid),
                "garbage_s": round(garbage_s, 1),
                "peak_rss_sampled_mb": peak["VmRSS"],
                **s,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
