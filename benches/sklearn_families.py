#!/usr/bin/env python3
"""scikit-learn's side of ``cargo bench --bench families``: each family fitted
on the same splits with the same hyperparameters as edgeloop's defaults.

Run from the repository root (the Rust bench does):

    python3 benches/sklearn_families.py [--reps N] [--blas-threads T]

Prints one JSON object to stdout: ``{"sklearn_version", "numpy_version",
"threads", "reps", "memory", "results": [...]}``, one result per (family,
dataset) with

* ``fit_s``: median wall time of ``Pipeline.fit`` over ``reps`` fits (seconds);
  the data is loaded and converted to arrays before timing;
* ``score``: accuracy (classification) or R^2 (regression) on the test split,
  of the last timed fit;
* ``peak_traced_bytes``: ``tracemalloc`` peak during one more fit, less the
  traced memory before it. tracemalloc sees Python objects and numpy's array
  buffers; it does not see what C/C++ code mallocs itself (liblinear's copy
  of the data for the SVM, the tree builder's node arrays, OpenBLAS buffers);
* ``peak_rss_bytes``: in a fresh ``python3`` per case, after imports and data
  loading, the peak resident set (``VmHWM``, reset by writing 5 to
  ``/proc/self/clear_refs``) during the first fit, less the resident set
  before it. It sees every allocation, C included, but in pages and counting
  code pages first touched by the fit; ``null`` where the reset is refused.

The estimators are those of the family fixture scripts
(``tests/fixtures/{logistic,mlp,trees_family,svm_linear}/gen_*.py``); features
go through float32 as edgeloop's samples do. BLAS/OpenMP threads are
``--blas-threads`` (default 2, the cores of the development machine) and
``n_jobs=2`` where the estimator has it (forest; the SVM's calibration folds,
on joblib's threading backend so that their memory is this process's).
"""

import os
import sys

BLAS_THREADS = sys.argv[sys.argv.index("--blas-threads") + 1] if "--blas-threads" in sys.argv else "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = BLAS_THREADS

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from joblib import parallel_config  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "datasets"))
from prepare import load_csv  # noqa: E402

# The cases of benches/families.rs, in its order.
CASES = [
    (family, dataset)
    for dataset in ("occupancy", "gas12")
    for family in ("logistic", "mlp", "tree", "forest", "svm")
] + [(family, "air_quality") for family in ("linear", "ridge", "mlp", "tree", "forest")]
REGRESSION = {"air_quality"}
N_JOBS = 2

# edgeloop's ModelConfig::default() (l2, max_iter; the logistic gtol 1e-9 of
# learn::logistic_config) and the family sections' defaults.
LOGISTIC_L2, LOGISTIC_MAX_ITER, LOGISTIC_GTOL = 1e-3, 300, 1e-9
MLP = dict(hidden_layer_sizes=(32, 16), activation="relu", solver="adam",
           learning_rate_init=1e-3, alpha=1e-4, batch_size=200, max_iter=200,
           early_stopping=True, validation_fraction=0.1, n_iter_no_change=10,
           tol=1e-4, shuffle=True, random_state=0)
TREE = dict(max_depth=10, min_samples_split=2, min_samples_leaf=1, random_state=0)
FOREST = dict(n_estimators=50, max_depth=12, min_samples_split=2, min_samples_leaf=1,
              bootstrap=True, random_state=0, n_jobs=N_JOBS)


def load(dataset, split):
    _, x, y = load_csv(f"{dataset}_{split}.csv")
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    y = np.asarray(y, dtype=np.float64) if dataset in REGRESSION else np.asarray(y)
    return x, y


def estimator(family, dataset, n_train, n_classes):
    """The fixture scripts' pipeline for `family` with edgeloop's defaults."""
    regression = dataset in REGRESSION
    if family == "logistic":
        # gen_logistic.py: C = 2/(n l2) for two classes, 1/(n l2) for more.
        c = (2.0 if n_classes == 2 else 1.0) / (n_train * LOGISTIC_L2)
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=c, solver="lbfgs", tol=LOGISTIC_GTOL, max_iter=LOGISTIC_MAX_ITER))
    if family == "mlp":
        mlp = MLPRegressor(**MLP) if regression else MLPClassifier(**MLP)
        return make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), mlp)
    if family == "tree":
        tree = (DecisionTreeRegressor(**TREE) if regression
                else DecisionTreeClassifier(criterion="gini", **TREE))
        return make_pipeline(SimpleImputer(strategy="mean"), tree)
    if family == "forest":
        forest = (RandomForestRegressor(max_features=1.0, **FOREST) if regression
                  else RandomForestClassifier(criterion="gini", max_features="sqrt", **FOREST))
        return make_pipeline(SimpleImputer(strategy="mean"), forest)
    scaling = [StandardScaler(), SimpleImputer(strategy="constant", fill_value=0.0)]
    if family == "svm":
        svc = LinearSVC(C=1.0, loss="hinge", intercept_scaling=10.0, tol=1e-5,
                        max_iter=1_000_000, random_state=0)
        return make_pipeline(*scaling, CalibratedClassifierCV(
            svc, method="sigmoid", cv=5, ensemble=False, n_jobs=N_JOBS))
    if family == "linear":
        return make_pipeline(*scaling, LinearRegression(n_jobs=N_JOBS))
    if family == "ridge":
        return make_pipeline(*scaling, Ridge(alpha=1.0))
    raise ValueError(family)


def fit(model, x, y):
    with warnings.catch_warnings(), parallel_config(backend="threading"):
        # Hitting max_iter is part of the compared behaviour, not an error.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)


def setup(family, dataset):
    x, y = load(dataset, "train")
    n_classes = 0 if dataset in REGRESSION else len(set(y.tolist()))
    return lambda: estimator(family, dataset, len(y), n_classes), x, y


def vm_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def rss_child(family, dataset):
    """One fit in this (fresh) process: peak resident growth, bytes, or None."""
    make, x, y = setup(family, dataset)
    model = make()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    before = vm_kib("VmRSS:")
    fit(model, x, y)
    return max(0, vm_kib("VmHWM:") - before) * 1024


def run_case(family, dataset, reps):
    make, x, y = setup(family, dataset)
    x_test, y_test = load(dataset, "test")
    times = []
    for _ in range(reps):
        model = make()
        t0 = time.perf_counter()
        fit(model, x, y)
        times.append(time.perf_counter() - t0)
    pred = model.predict(x_test)
    score = r2_score(y_test, pred) if dataset in REGRESSION else accuracy_score(y_test, pred)
    model = make()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fit(model, x, y)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss", family, dataset,
                            "--blas-threads", BLAS_THREADS],
                           capture_output=True, text=True, check=True)
    return {
        "family": family,
        "dataset": dataset,
        "metric": "r2" if dataset in REGRESSION else "accuracy",
        "n_train": len(y),
        "fit_s": statistics.median(times),
        "fit_s_all": times,
        "score": float(score),
        "peak_traced_bytes": peak,
        "peak_rss_bytes": json.loads(child.stdout),
    }


def main():
    args = sys.argv[1:]
    if args[:1] == ["--rss"]:
        print(json.dumps(rss_child(args[1], args[2])))
        return
    reps = int(args[args.index("--reps") + 1]) if "--reps" in args else 5
    results = []
    for family, dataset in CASES:
        results.append(run_case(family, dataset, reps))
        print(f"{family} {dataset}: {results[-1]['fit_s'] * 1e3:.1f} ms", file=sys.stderr)
    print(json.dumps({
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "n_jobs": N_JOBS,
        "blas_threads": int(BLAS_THREADS),
        "reps": reps,
        "memory": "peak_traced_bytes: tracemalloc peak during a fit; peak_rss_bytes: "
                  "VmHWM growth over VmRSS during the first fit of a fresh process",
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
