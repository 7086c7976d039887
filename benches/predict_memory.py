"""Resident memory of a running edgeloop daemon while many clients ask for
large predictions at once (BENCHMARKS.md, "Concurrent predictions").

    python3 benches/predict_memory.py PID [CLIENTS] [URL_HOST:PORT]

CLIENTS (150) connections each POST 10,000 rows (`http.max_rows`) of the
occupancy pipeline's five features to /v1/pipelines/occupancy/predict at
once, read the first 100 bytes of the answer and hold the connection 15 s
(a slow reader). Prints one JSON line: the daemon's VmRSS (kB) at the start,
its peak (sampled every 0.2 s) and after the clients are gone, and how many
answers began with 200. Run it against the binaries to compare, alternating.
"""
import json
import socket
import sys
import threading
import time

pid = int(sys.argv[1])
clients = int(sys.argv[2]) if len(sys.argv) > 2 else 150
host, port = (sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:18181").split(":")


def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


row = {"Temperature": 21.0, "Humidity": 27.2, "Light": 430, "CO2": 710, "HumidityRatio": 0.004}
body = json.dumps({"rows": [row] * 10000}).encode()
request = (
    b"POST /v1/pipelines/occupancy/predict HTTP/1.1\r\nHost: x\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
) + body
start = rss()
peak = [start]
done = [False]


def watch():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.2)


ok = []


def client():
    try:
        s = socket.create_connection((host, int(port)), timeout=120)
        s.sendall(request)
        ok.append(s.recv(100).startswith(b"HTTP/1.1 200"))
        time.sleep(15)
        s.close()
    except OSError:
        ok.append(False)


watcher = threading.Thread(target=watch)
watcher.start()
threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done[0] = True
watcher.join()
print(json.dumps({"clients": clients, "ok": sum(ok), "rss_start_kb": start,
                  "rss_peak_kb": peak[0], "rss_after_kb": rss()}))
