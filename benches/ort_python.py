"""onnxruntime's latency in Python on the conformance suite, the reference column
of `cargo bench --bench engines` (which runs this script as a subprocess).

    python3 benches/ort_python.py [SUITE_DIR]

For every model in SUITE_DIR/manifest.json (default tests/fixtures/conformance;
the bench's forests are in target/bench-forests): one InferenceSession
(CPUExecutionProvider; onnxruntime's default thread pools, as the `ort`
engine's sessions have, unless EDGELOOP_BENCH_THREADS sets
intra_op_num_threads and inter_op_num_threads), fed the manifest's own inputs cut to a
single row and to 64 rows (a model with a fixed batch axis gets only its own
size). Reported per batch size: the median wall time of one `session.run` over
EDGELOOP_BENCH_REPS calls (default 200) after 20 warm-up calls, in
microseconds. Prints one JSON object {model: {"1": us, "64": us}} on stdout.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
SUITE = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures" / "conformance"
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "string": object}


def rows(inp, n):
    """The manifest input cut (or repeated) to `n` rows; None when impossible."""
    shape = list(inp["shape"])
    data = np.array(inp["data"], dtype=DTYPES[inp["dtype"]]).reshape(shape)
    if not shape:
        return None
    if shape[0] >= n:
        return data[:n]
    reps = -(-n // shape[0])
    return np.concatenate([data] * reps)[:n]


def fixed_batch(session, name):
    """The model's batch size when its first input dimension is a number."""
    for i in session.get_inputs():
        if i.name == name and i.shape and isinstance(i.shape[0], int):
            return i.shape[0]
    return None


def main():
    reps = int(os.environ.get("EDGELOOP_BENCH_REPS", "200"))
    threads = int(os.environ.get("EDGELOOP_BENCH_THREADS", "0"))
    manifest = json.loads((SUITE / "manifest.json").read_text())
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    out = {}
    for m in manifest["models"]:
        sess = ort.InferenceSession(
            str(SUITE / m["file"]), opts, providers=["CPUExecutionProvider"]
        )
        first = m["inputs"][0]["name"]
        fixed = fixed_batch(sess, first)
        sizes = [fixed] if fixed else [1, 64]
        res = {}
        for n in sizes:
            feed = {i["name"]: rows(i, n) for i in m["inputs"]}
            if any(v is None for v in feed.values()):
                continue
            for _ in range(20):
                sess.run(None, feed)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            res[str(n)] = statistics.median(times) * 1e6
        out[m["name"]] = res
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
