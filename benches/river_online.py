#!/usr/bin/env python3
"""River's side of ``cargo bench --bench online``: each online learner run
prequentially (predict, then learn, row by row) on the same streams as
edgeloop's.

Run from the repository root (the Rust bench does):

    target/pyenv/bin/python benches/river_online.py

Prints one JSON object: ``{"river_version", "results": [...]}``, one result
per (stream, family) with

* ``accuracy``: prequential accuracy over the rows River predicted;
* ``seconds``: wall time of the predictions and updates (the stream is
  already in memory as dicts);
* ``peak_traced_bytes``: ``tracemalloc`` peak during a second run, less the
  traced memory before it: the model's Python objects and what it allocates
  while learning (River is Python, so this sees nearly everything it holds).

The learners, River's defaults: ``StandardScaler() | LogisticRegression()``
(one-vs-rest with ``multiclass.OneVsRestClassifier`` beyond two classes),
``tree.HoeffdingTreeClassifier()``,
``tree.HoeffdingAdaptiveTreeClassifier(seed=42)``,
``forest.ARFClassifier(seed=42)``. Streams (``STREAMS`` below): River's
generated SEA, Agrawal and RandomRBFDrift of ``tests/fixtures/online``; UCI
gas sensor drift batches 1–6, 8, 9 in order (``data/gas_sensor_drift``, 128
features, the concentration is not one); UCI Occupancy ``datatraining.txt``
(5 features, label ``Occupancy``). Features go through float32 as edgeloop's
stored samples do.

Regression (``REGRESSION`` below; results with ``"task": "regression"`` and
``mae``, ``r2`` over every row instead of ``accuracy``):
``StandardScaler() | tree.HoeffdingTreeRegressor()`` and
``StandardScaler() | forest.ARFRegressor(seed=42)`` on River's generated
FriedmanDrift of ``tests/fixtures/online/friedman_drift.csv`` and on UCI Air
Quality (``tests/fixtures/datasets/air_quality_train.csv``, 6,139 rows, label
CO_GT, 8 features, an empty field missing: the key left out).

``ONLINE_BENCH=classification`` or ``regression`` runs only that part.
"""

import csv
import json
import time
import tracemalloc

import numpy as np
import river
import os

from river import forest, linear_model, metrics, multiclass, preprocessing, tree

GAS_CLASSES = sorted(["Ethanol", "Ethylene", "Ammonia", "Acetaldehyde", "Acetone", "Toluene"])


def f32(v):
    return float(np.float32(v))


def generated(path):
    with open(path) as f:
        r = csv.reader(f)
        head = next(r)
        rows = list(r)
    return [[f32(v) for v in row[:-1]] for row in rows], [int(row[-1]) for row in rows]


def gas():
    xs, ys = [], []
    for b in [1, 2, 3, 4, 5, 6, 8, 9]:
        with open(f"data/gas_sensor_drift/batch{b}.dat") as f:
            for line in f:
                fields = line.strip().split(",")
                ys.append(GAS_CLASSES.index(fields[0]))
                xs.append([f32(v) for v in fields[2:]])
    return xs, ys


def occupancy():
    xs, ys = [], []
    with open("data/occupancy_uci/datatraining.txt") as f:
        r = csv.reader(f)
        head = next(r)
        for row in r:
            # A leading row-number column the header does not name.
            row = row[-len(head):]
            xs.append([f32(v) for v in row[1:6]])
            ys.append(int(row[6]))
    return xs, ys


STREAMS = {
    "sea": lambda: generated("tests/fixtures/online/sea.csv"),
    "agrawal": lambda: generated("tests/fixtures/online/agrawal.csv"),
    "rbf_drift": lambda: generated("tests/fixtures/online/rbf_drift.csv"),
    "gas": gas,
    "occupancy": occupancy,
}


def regression_stream(path):
    xs, ys = [], []
    with open(path) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            xs.append([f32(v) if v != "" else None for v in row[:-1]])
            ys.append(float(row[-1]))
    return xs, ys


REGRESSION = {
    "friedman_drift": lambda: regression_stream("tests/fixtures/online/friedman_drift.csv"),
    "air_quality": lambda: regression_stream("tests/fixtures/datasets/air_quality_train.csv"),
}


def regressors():
    return {
        "hoeffding_tree": lambda: preprocessing.StandardScaler() | tree.HoeffdingTreeRegressor(),
        "arf": lambda: preprocessing.StandardScaler() | forest.ARFRegressor(seed=42),
    }


def run_regression(model, xs, ys):
    mae, r2 = metrics.MAE(), metrics.R2()
    for x, y in zip(xs, ys):
        p = model.predict_one(x)
        mae.update(y, p)
        r2.update(y, p)
        model.learn_one(x, y)
    return mae.get(), r2.get()


def learners(n_classes):
    def logistic():
        if n_classes == 2:
            return preprocessing.StandardScaler() | linear_model.LogisticRegression()
        return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression()
        )

    return {
        "online_logistic": logistic,
        "hoeffding_tree": tree.HoeffdingTreeClassifier,
        "hoeffding_adaptive_tree": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=42),
        "arf": lambda: forest.ARFClassifier(seed=42),
    }


def run(model, xs, ys, binary):
    hits = scored = 0
    for x, y in zip(xs, ys):
        p = model.predict_one(x)
        if p is not None:
            scored += 1
            hits += int(int(p) == y)
        model.learn_one(x, bool(y) if binary else y)
    return hits / scored if scored else None


def main():
    results = []
    part = os.environ.get("ONLINE_BENCH", "all")
    for name, load in (STREAMS if part != "regression" else {}).items():
        rows, ys = load()
        xs = [{f"f{i:03d}": v for i, v in enumerate(r)} for r in rows]
        n_classes = len(set(ys))
        for family, make in learners(n_classes).items():
            t = time.perf_counter()
            accuracy = run(make(), xs, ys, n_classes == 2)
            seconds = time.perf_counter() - t
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            run(make(), xs, ys, n_classes == 2)
            peak = tracemalloc.get_traced_memory()[1] - before
            tracemalloc.stop()
            results.append(
                {
                    "stream": name,
                    "family": family,
                    "rows": len(ys),
                    "features": len(rows[0]),
                    "classes": n_classes,
                    "accuracy": accuracy,
                    "seconds": seconds,
                    "peak_traced_bytes": peak,
                }
            )
    for name, load in (REGRESSION if part != "classification" else {}).items():
        rows, ys = load()
        xs = [{f"f{i:03d}": v for i, v in enumerate(r) if v is not None} for r in rows]
        for family, make in regressors().items():
            t = time.perf_counter()
            mae, r2 = run_regression(make(), xs, ys)
            seconds = time.perf_counter() - t
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            run_regression(make(), xs, ys)
            peak = tracemalloc.get_traced_memory()[1] - before
            tracemalloc.stop()
            results.append(
                {
                    "task": "regression",
                    "stream": name,
                    "family": family,
                    "rows": len(ys),
                    "features": len(rows[0]),
                    "mae": mae,
                    "r2": r2,
                    "seconds": seconds,
                    "peak_traced_bytes": peak,
                }
            )
    print(json.dumps({"river_version": river.__version__, "results": results}))


if __name__ == "__main__":
    main()
