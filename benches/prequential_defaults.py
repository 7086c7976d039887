#!/usr/bin/env python3
"""``edgeloop evaluate --prequential`` at its defaults beside River, on the
same streams, in one run (the "evaluate --prequential defaults" table of
BENCHMARKS.md).

Run from the repository root after a release build
(``cargo build --release --features ort``):

    target/pyenv/bin/python benches/prequential_defaults.py [--bin target/release/edgeloop]
        [--out target/prequential_defaults] [--only NAME,...] [--river]

For each stream (written as CSV under ``--out``):

* ``edgeloop evaluate --prequential --file F --label L`` and nothing else
  (the defaults), with ``--record`` to score per batch, and again without it
  for rows/s and peak memory (the record holds every row's predictions in
  memory until it is written); the same with ``--online off`` (the loop
  alone);
* with ``--river``: River 0.26.1's ``forest.ARFClassifier(seed=42)`` and
  ``StandardScaler() | LogisticRegression()`` (one-vs-rest beyond two
  classes), test then train on the same rows as floats through float32, each
  in its own process: accuracy, rows/s of the predictions and updates, and
  the process's peak resident memory (``ru_maxrss``), as edgeloop's report
  gives its own (``VmHWM``);
* the previous-label baseline.

Streams: UCI gas sensor drift batches 1-6, 8, 9 in order (``gas``; the
goal's number is the mean accuracy over batches 2-9) and batch 1 alone
(``gas_batch1``: rows grouped by gas, classes one after another); UCI
Occupancy ``datatraining.txt``; River's SEA, Agrawal and RandomRBFDrift of
``tests/fixtures/online``; ``regime``: a made-up electricity-market-like
stream, strongly autocorrelated (below, seeded), standing in for the held-
back electricity stream.

Prints one JSON object per stream and a Markdown table.
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

GAS_CLASSES = sorted(["Ethanol", "Ethylene", "Ammonia", "Acetaldehyde", "Acetone", "Toluene"])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def gas_rows(batches):
    rows, batch_of = [], []
    for b in batches:
        with open(f"data/gas_sensor_drift/batch{b}.dat") as f:
            for line in f:
                fields = line.strip().split(",")
                rows.append(fields[2:] + [fields[0]])
                batch_of.append(b)
    return rows, batch_of


def regime_stream(n=45312, seed=17):
    """An electricity-market-like stream: half-hourly periods, a daily and
    weekly demand shape, a price following demand plus a Markov-switching
    level (persistent regimes) and AR(1) noise with spikes, a neighbour
    market's price and demand and the transfer between them; the label is
    whether the price is above its mean over the last 24 hours (48 periods),
    as the electricity stream's is. Six numeric features (period, price,
    demand, neighbour price, neighbour demand, transfer)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    period = (t % 48) / 48.0
    day = (t // 48) % 7
    shape = 0.5 + 0.25 * np.sin(2 * np.pi * (period - 0.3)) + 0.1 * np.sin(4 * np.pi * period)
    weekly = np.where(day >= 5, -0.08, 0.0)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.97 * ar[i - 1] + rng.normal(0, 0.02)
    demand = shape + weekly + ar + 0.0005 * np.sin(2 * np.pi * t / (48 * 365))
    # Price regimes: a Markov chain over 3 levels, staying 0.998 per period.
    levels = np.array([0.0, 0.08, 0.2])
    state = np.zeros(n, dtype=int)
    for i in range(1, n):
        state[i] = state[i - 1] if rng.random() < 0.998 else rng.integers(0, 3)
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.5 * noise[i - 1] + rng.normal(0, 0.06)
    spikes = (rng.random(n) < 0.01) * rng.exponential(0.15, n)
    price = 0.6 * demand + levels[state] + noise + spikes
    vicprice = 0.7 * price + 0.3 * rng.normal(0.4, 0.05, n)
    vicdemand = 0.8 * demand + rng.normal(0, 0.03, n)
    transfer = np.tanh(3 * (price - vicprice)) + rng.normal(0, 0.05, n)
    mean24 = np.array([price[max(0, i - 47) : i + 1].mean() for i in range(n)])
    label = np.where(price > mean24, "UP", "DOWN")
    rows = [
        [f"{period[i]:.6f}", f"{price[i]:.6f}", f"{demand[i]:.6f}", f"{vicprice[i]:.6f}",
         f"{vicdemand[i]:.6f}", f"{transfer[i]:.6f}", label[i]]
        for i in range(n)
    ]
    return ["period", "price", "demand", "vicprice", "vicdemand", "transfer", "class"], rows


def prepare(out):
    """Writes the streams; returns {name: (path, label, batches or None)}."""
    os.makedirs(out, exist_ok=True)
    streams = {}
    head = [f"f{i:03d}" for i in range(128)] + ["gas"]
    rows, batch_of = gas_rows([1, 2, 3, 4, 5, 6, 8, 9])
    write_csv(f"{out}/gas.csv", head, rows)
    streams["gas"] = (f"{out}/gas.csv", "gas", batch_of)
    rows, _ = gas_rows([1])
    write_csv(f"{out}/gas_batch1.csv", head, rows)
    streams["gas_batch1"] = (f"{out}/gas_batch1.csv", "gas", None)
    with open("data/occupancy_uci/datatraining.txt") as f:
        r = csv.reader(f)
        h = next(r)
        occ = [row[-len(h):][1:] for row in r]
    write_csv(f"{out}/occupancy.csv", h[1:], occ)
    streams["occupancy"] = (f"{out}/occupancy.csv", "Occupancy", None)
    for name in ["sea", "agrawal", "rbf_drift"]:
        streams[name] = (f"tests/fixtures/online/{name}.csv", "label", None)
    h, rows = regime_stream()
    write_csv(f"{out}/regime.csv", h, rows)
    streams["regime"] = (f"{out}/regime.csv", "class", None)
    return streams


def read_stream(path, label):
    with open(path) as f:
        r = csv.reader(f)
        h = next(r)
        rows = list(r)
    j = h.index(label)
    names = [c for i, c in enumerate(h) if i != j]
    xs = [{n: float(np.float32(v)) for n, v in zip(names, [c for i, c in enumerate(row) if i != j])} for row in rows]
    ys = [row[j] for row in rows]
    return xs, ys


def river_child(path, label, family):
    """Runs one River learner test then train; prints JSON."""
    from river import forest, linear_model, multiclass, preprocessing

    xs, ys = read_stream(path, label)
    classes = sorted(set(ys))
    if family == "arf":
        model = forest.ARFClassifier(seed=42)
    elif len(classes) == 2:
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    else:
        model = preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression()
        )
    # Two classes: River's binary LogisticRegression learns bools.
    binary = family != "arf" and len(classes) == 2
    preds = []
    t = time.perf_counter()
    for x, y in zip(xs, ys):
        p = model.predict_one(x)
        if binary:
            p = None if p is None else classes[int(bool(p))]
            y = y == classes[1]
        preds.append(p)
        model.learn_one(x, y)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"preds": [None if p is None else str(p) for p in preds],
                      "seconds": seconds, "peak_rss_bytes": peak}))


def accuracy(preds, ys, idx=None):
    idx = range(len(ys)) if idx is None else idx
    scored = [(preds[i], ys[i]) for i in idx if preds[i] not in (None, "")]
    return sum(p == y for p, y in scored) / len(scored) if scored else None


def per_batch_mean(preds, ys, batch_of):
    accs = []
    for b in sorted(set(batch_of)):
        if b == 1:
            continue
        idx = [i for i, bb in enumerate(batch_of) if bb == b]
        accs.append(accuracy(preds, ys, idx))
    return sum(accs) / len(accs)


def edgeloop(binary, path, label, out, name, extra):
    rec = f"{out}/{name}{'_'.join([''] + [e.strip('-') for e in extra])}.record.csv"
    cmd = [binary, "evaluate", "--prequential", "--file", path, "--label", label,
           "--json", "--record", rec] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(r.stdout)
    with open(rec) as f:
        record = list(csv.DictReader(f))
    # Speed and memory from the issue's own command, without `--record`
    # (which keeps every row's predictions in memory until it writes them):
    # a second run, `--json` only to read them.
    plain = [binary, "evaluate", "--prequential", "--file", path, "--label", label,
             "--json"] + extra
    r = subprocess.run(plain, capture_output=True, text=True, check=True)
    bare = json.loads(r.stdout)
    assert bare["served_accuracy"] == report["served_accuracy"], "the record changed the run"
    report["rows_per_second"] = bare["rows_per_second"]
    report["peak_rss_bytes"] = bare["peak_rss_bytes"]
    return report, record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/edgeloop")
    ap.add_argument("--out", default="target/prequential_defaults")
    ap.add_argument("--only", default="")
    ap.add_argument("--river", action="store_true")
    ap.add_argument("--extra", default="", help="more evaluate flags, space-separated")
    ap.add_argument("--river-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.river_child:
        river_child(*args.river_child)
        return
    streams = prepare(args.out)
    only = [s for s in args.only.split(",") if s]
    table = []
    for name, (path, label, batch_of) in streams.items():
        if only and name not in only:
            continue
        extra = args.extra.split()
        rep, rec = edgeloop(args.bin, path, label, args.out, name, extra)
        ys = [r["label"] for r in rec]
        served = [r["served"] for r in rec]
        res = {
            "stream": name,
            "rows": rep["rows"],
            "features": len(rep["features"]),
            "served": rep["served_accuracy"],
            "online": dict(zip(rep["online"], rep["online_accuracy"])),
            "learners": rep["learners"],
            "switches": len(rep["switches"]),
            "previous_label": rep["previous_label_accuracy"],
            "rows_per_second": rep["rows_per_second"],
            "peak_mib": (rep["peak_rss_bytes"] or 0) / 2**20,
            "online_family": rep["online"],
        }
        drop = ("--online", "--no-change")
        no_online = [e for i, e in enumerate(extra) if e not in drop and (i == 0 or extra[i - 1] not in drop)]
        lo, lrec = edgeloop(args.bin, path, label, args.out, name,
                            no_online + ["--online", "off", "--no-change", "false"])
        res["loop_only"] = lo["served_accuracy"]
        if batch_of:
            res["served_batches_2_9"] = per_batch_mean(served, ys, batch_of)
            res["online_batches_2_9"] = {
                n: per_batch_mean([r[n] for r in rec], ys, batch_of) for n in rep["online"]
            }
            res["loop_only_batches_2_9"] = per_batch_mean([r["served"] for r in lrec], ys, batch_of)
        if args.river:
            for fam in ["arf", "logistic"]:
                r = subprocess.run([sys.executable, __file__, "--river-child", path, label, fam],
                                   capture_output=True, text=True, check=True)
                o = json.loads(r.stdout)
                res[f"river_{fam}"] = accuracy(o["preds"], ys)
                res[f"river_{fam}_rows_per_second"] = len(ys) / o["seconds"]
                res[f"river_{fam}_peak_mib"] = o["peak_rss_bytes"] / 2**20
                if batch_of:
                    res[f"river_{fam}_batches_2_9"] = per_batch_mean(o["preds"], ys, batch_of)
        print(json.dumps(res), flush=True)
        table.append(res)
    f = lambda v: "-" if v is None else f"{v:.3f}"
    print("\n| stream | loop only | online only | served | previous label | River ARF | River LogisticRegression | edgeloop rows/s | ARF rows/s | edgeloop peak MiB | ARF peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        online = ", ".join(f"{k} {f(v)}" for k, v in r["online"].items()) or "-"
        print(f"| {r['stream']} | {f(r['loop_only'])} | {online} | {f(r['served'])} | {f(r['previous_label'])} | "
              f"{f(r.get('river_arf'))} | {f(r.get('river_logistic'))} | {r['rows_per_second']:.0f} | "
              f"{r.get('river_arf_rows_per_second', 0):.0f} | {r['peak_mib']:.1f} | {r.get('river_arf_peak_mib', 0):.1f} |")


if __name__ == "__main__":
    main()
