#!/usr/bin/env python3
"""Publishes synthetic occupancy readings over MQTT (QoS 1), for the memory
measurements in BENCHMARKS.md ("Training memory").

    python3 benches/publish_readings.py --port 1883 --count 100000 \\
        --devices 1000 --labelled 0.5 --seed 11

Each message goes to ``sensors/dev{k}/occupancy`` (k drawn uniformly among
``--devices``) with the five UCI Occupancy features (Temperature 20-23,
Humidity 27-28, Light 0 or 430, CO2 500-800, HumidityRatio 0.0048), a
``Date`` one second after the previous one (starting at 2015-01-01 plus
``seed`` x 10^7 s, so two seeds never share a timestamp), and, with
probability ``--labelled``, ``Occupancy`` = 1 when Light is 430. Seeded:
the same arguments publish the same messages. Needs paho-mqtt 2.
"""
import argparse
import json
import random
import time

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--labelled", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"publish-readings-{a.seed}")
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(a.host, a.port)
    client.loop_start()
    start = 1420070400 + a.seed * 10_000_000
    pending = []
    for i in range(a.count):
        device = rng.randrange(a.devices)
        # Drawn in this order (the measurements' messages).
        reading = {
            "Date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + i)),
            "Temperature": 20 + rng.random() * 3,
            "Humidity": 27 + rng.random(),
            "Light": rng.choice([0, 430]),
            "CO2": 500 + rng.random() * 300,
            "HumidityRatio": 0.0048,
        }
        if rng.random() < a.labelled:
            reading["Occupancy"] = int(reading["Light"] > 0)
        pending.append(client.publish(f"sensors/dev{device}/occupancy", json.dumps(reading), qos=1))
        if len(pending) > 5000:
            for p in pending:
                p.wait_for_publish(60)
            pending = []
    for p in pending:
        p.wait_for_publish(60)
    client.loop_stop()
    print(f"published {a.count}")


if __name__ == "__main__":
    main()
