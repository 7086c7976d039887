#!/usr/bin/env python3
"""Forests of the sizes issue 19 measures (50 to 300 trees), for
`cargo bench --bench engines`, which runs this script first: written to
``target/bench-forests/`` (not committed; a few MB), in the conformance
manifest's format (64 gas12 holdout rows as the input, onnxruntime 1.32.0's
outputs), so the bench can load them like the conformance suite's.

* ``rf50_gas12``: RandomForestClassifier(50 trees, no depth limit), skl2onnx;
* ``rf300_gas12``: RandomForestClassifier(300 trees, max_depth=12), skl2onnx;
* ``lgbm100_gas12``: LGBMClassifier(100 rounds, 31 leaves) through onnxmltools.

gas12: UCI Gas Sensor Drift batches 1-2 (tests/fixtures/datasets), 128 features,
6 classes. Seeded, one thread. Run from the repository root (the bench does):

    python3 benches/gen_forests.py [OUT_DIR]
"""
import csv
import json
import os
import sys

import lightgbm
import numpy as np
import onnxmltools
import onnxruntime as ort
from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "bench-forests")


def load(name):
    with open(os.path.join(ROOT, "tests", "fixtures", "datasets", name), newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32), np.array([r[-1] for r in rows])


def main():
    os.makedirs(OUT, exist_ok=True)
    x, y = load("gas12_train.csv")
    xte, _ = load("gas12_test.csv")
    xte = xte[np.linspace(0, len(xte) - 1, 64).round().astype(np.int64)]
    classes = sorted(set(y))
    yi = np.array([classes.index(c) for c in y])
    models = []
    for name, trees, depth in [("rf50_gas12", 50, None), ("rf300_gas12", 300, 12)]:
        rf = RandomForestClassifier(trees, max_depth=depth, random_state=0, n_jobs=1).fit(x, yi)
        onx = convert_sklearn(rf, initial_types=[("input", FloatTensorType([None, 128]))],
                              target_opset={"": 17, "ai.onnx.ml": 3}, options={id(rf): {"zipmap": False}})
        models.append((name, onx))
    gb = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, random_state=0, n_jobs=1,
                                 deterministic=True, force_row_wise=True, verbose=-1).fit(x, yi)
    models.append(("lgbm100_gas12", onnxmltools.convert_lightgbm(
        gb, initial_types=[("input", MLFloat([None, 128]))], target_opset=15, zipmap=False)))
    entries = []
    for name, onx in models:
        path = os.path.join(OUT, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        out = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"input": xte})
        entries.append({
            "name": name, "file": f"{name}.onnx",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [64, 128],
                        "data": [float(v) for v in xte.ravel()]}],
            "outputs": [{"name": "label", "dtype": "int64", "shape": [64],
                         "data": [int(v) for v in np.asarray(out[0]).ravel()]}],
        })
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "benches/gen_forests.py", "models": entries}, f)


if __name__ == "__main__":
    main()
