"""The short-run alarm rules tried for issue 18 beside the one kept (the
level rule of `edgeloop anomaly`, measured by benches/nab_score.py): each
computed here in Python on top of `edgeloop anomaly --level-margin 0` (the
rules before: Half-Space Trees' quantile threshold and the residual test),
and measured as nab_score.py measures the binary:

- short runs: for each of the 14 NAB files the 1,140 rows with the first
  labelled anomaly at row 570 (nab_score.py's `short_slices`): caught within
  50 rows of the onset, at most one alarm before, both;
- the long files: NAB score by alarms (standard profile, nab_score.py's
  scorer) and alarms;
- UCI Occupancy's three files (no labelled anomaly): alarms and episodes
  (an alarm more than 60 rows after the previous one opens one).

Rules (alarms added to the rules before, unless said):

- `cusum`: per feature a two-sided tabular CUSUM (Page, "Continuous
  inspection schemes", Biometrika 1954; Montgomery, "Introduction to
  Statistical Quality Control", ch. 9: k = 0.5, h in standard deviations)
  of `(x - m) / sigma`, m an EWMA (`am`) of the feature, sigma the smoothed
  mean absolute first difference times sqrt(pi)/2 (`diff`: the noise's
  standard deviation, blind to a slow wander) or the smoothed mean absolute
  residual (`abs`); both sides reset after an alarm; from row 100.
- `cusum-record`: the same CUSUM of the residual z (the residual test's
  EWMA and smoothed MAD), alarmed when above `c` times its largest value
  before (from row 200, until row 1,030).
- `residual-record`: the residual test's limit during its warm-up (rows 200
  to 1,030, before its quantile exists) `max(floor, c x` the largest
  residual z before`)` instead of the fixed 10 (this replaces the residual
  alarms there).
- `level`: the level distance (|x - median| over a robust scale of the
  earlier rows: IQR / 1.349 or 1.4826 MAD; features combined by `max` or by
  the root sum of squares `l2`) alarmed above `c` times its record from row
  `W` (the record from the row whose history holds `start` rows), until row
  1,250: the rule kept, at its defaults (iqr, l2, c 1.25, W 200, start 50)
  the binary's alarms, and variants.

Run: python3 benches/nab_short_rules.py [DATA_DIR] [BINARY] (as
nab_score.py, in the test venv); output committed as
benches/nab_short_rules.txt.
"""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("nab_score", os.path.join(HERE, "nab_score.py"))
ns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ns)
OCCUPANCY = "Temperature,Humidity,Light,CO2,HumidityRatio"
RESIDUAL_READY, RESIDUAL_CALIBRATED = 30, 1030


def base(path, features):
    """The rules before, per row: values, residual z, trees' and residual
    alarms."""
    v = ns.edgeloop_json(path, features, ["--level-margin", "0"])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in features.split(",")] for r in rows])
    trees = [a for a, r in zip(v["alarms"], v["rules"]) if r in ("trees", "both")]
    residual = [a for a, r in zip(v["alarms"], v["rules"]) if r in ("residual", "both")]
    return {"x": x, "z": v["residual_z"], "trees": trees, "residual": residual}


def signed_residual_z(col, alpha=0.05, floor=0.5, long_alpha=0.001):
    """The residual test's z of each value, with its sign."""
    out, m, d, big = [0.0] * len(col), None, None, None
    for t, v in enumerate(col):
        if m is not None and d is not None and max(d, floor * big) > 0:
            out[t] = (v - m) / max(d, floor * big)
        if m is None:
            m = v
            continue
        r = v - m
        if d is None:
            d = big = abs(r)
        else:
            d += alpha * (abs(r) - d)
            big += long_alpha * (abs(r) - big)
        m += alpha * r
    return out


def cusum(x, h, am, scale, k=0.5, warm=100, ad=0.05):
    alarms = []
    n, dim = x.shape
    for j in range(dim):
        col = x[:, j]
        m = s = prev = None
        sp = sn = 0.0
        for t in range(n):
            v = col[t]
            if t >= warm and s:
                sigma = s * math.sqrt(math.pi) / 2 if scale == "diff" else s
                z = (v - m) / sigma
                sp, sn = max(0.0, sp + z - k), max(0.0, sn - z - k)
                if sp > h or sn > h:
                    alarms.append(t)
                    sp = sn = 0.0
            if m is None:
                m = prev = v
                continue
            dv = abs(v - prev) if scale == "diff" else abs(v - m)
            s = dv if s is None else s + (1.0 / (t + 1) if t < warm else ad) * (dv - s)
            m += am * (v - m)
            prev = v
    return sorted(set(alarms))


def record(stat, c, start, end, begin=0, floor=0.0):
    """Rows in [start, end) whose statistic exceeds max(floor, c x) the
    largest value of the rows in [begin, row)."""
    out, best = [], 0.0
    for t in range(min(len(stat), end)):
        if t >= start and best > 0 and stat[t] > max(floor, c * best):
            out.append(t)
        if t >= begin:
            best = max(best, stat[t])
    return out


def cusum_record(x, c, k=0.5):
    stats = np.zeros(len(x))
    for j in range(x.shape[1]):
        z = signed_residual_z(list(x[:, j]))
        sp = sn = 0.0
        for t, zz in enumerate(z):
            sp, sn = max(0.0, sp + zz - k), max(0.0, sn - zz - k)
            stats[t] = max(stats[t], sp, sn)
    return record(stats, c, 200, RESIDUAL_CALIBRATED, begin=RESIDUAL_READY)


def level_distance(x, scale, combine, end=1250, start=50):
    n = min(len(x), end)
    out = np.zeros(n)
    for t in range(start, n):
        zs = []
        for j in range(x.shape[1]):
            h = x[:t, j]
            med = np.median(h)
            if scale == "iqr":
                q25, q75 = np.quantile(h, [0.25, 0.75])
                s = (q75 - q25) / 1.349
            else:
                s = 1.4826 * np.median(np.abs(h - med))
            zs.append(abs(x[t, j] - med) / s if s > 0 else 0.0)
        zs = np.array(zs)
        out[t] = zs.max() if combine == "max" else math.sqrt((zs ** 2).sum())
    return out


def rules():
    cache = {}

    def level(scale, combine, c, warmup=200, start=50):
        def f(b, key):
            k = (key, scale, combine, start)
            if k not in cache:
                cache[k] = level_distance(b["x"], scale, combine, start=start)
            return {"extra": record(cache[k], c, warmup, 1250)}
        return f

    out = []
    for scale in ("diff", "abs"):
        for am in (0.05, 0.01):
            for h in (10, 20, 40):
                out.append((f"cusum {scale}, EWMA alpha {am}, k 0.5, h {h}",
                            lambda b, key, s=scale, a=am, hh=h: {"extra": cusum(b["x"], hh, a, s)}))
    for c in (1.0, 1.25, 1.5):
        out.append((f"cusum-record of the residual z, k 0.5, c {c}",
                    lambda b, key, cc=c: {"extra": cusum_record(b["x"], cc)}))
    for c, floor in ((1.0, 0.0), (1.25, 0.0), (1.5, 0.0), (1.25, 10.0), (1.25, 5.0)):
        out.append((f"residual-record: limit max({floor:g}, {c} x record) from row 200",
                    lambda b, key, cc=c, fl=floor: {"residual_warmup": record(
                        b["z"], cc, 200, RESIDUAL_CALIBRATED, begin=RESIDUAL_READY, floor=fl)}))
    for scale, combine, c, warmup, start in (
            ("iqr", "l2", 1.25, 200, 50), ("iqr", "l2", 1.25, 200, 10),
            ("iqr", "l2", 1.25, 200, 100), ("iqr", "max", 1.25, 200, 50),
            ("mad", "max", 1.2, 200, 50), ("mad", "max", 1.25, 200, 50),
            ("iqr", "l2", 1.2, 300, 50)):
        out.append((f"level {scale}, {combine}, c {c}, from row {warmup}, record from {start}",
                    level(scale, combine, c, warmup, start)))
    return out


def alarms_of(b, r):
    residual = b["residual"]
    if "residual_warmup" in r:
        residual = [a for a in residual if a >= RESIDUAL_CALIBRATED] + r["residual_warmup"]
        # Before row 200 the fixed limit still holds.
        residual += [a for a in b["residual"] if a < 200]
    return sorted(set(b["trees"]) | set(residual) | set(r.get("extra", [])))


def main():
    files = ns.load()
    prepared = [(ns.row_weights([r[0] for r in rows], wins), rows, path, key, labs)
                for key, path, rows, wins, labs in files]
    slices = ns.short_slices(prepared, tempfile.mkdtemp(prefix="nab_rules_"))
    short = {key: (base(path, "value"), onset) for key, path, onset, _ in slices}
    long = {key: (base(path, "value"), wn) for wn, _, path, key, _ in prepared}
    occ = {name: base(os.path.join(ns.DATA, "occupancy_uci", name), OCCUPANCY)
           for name in ("datatest.txt", "datatraining.txt", "datatest2.txt")}
    n_windows = sum(n for _, (_, n) in long.values())
    print("Short-run alarm rules tried for issue 18 (benches/nab_short_rules.py); "
          f"data {ns.DATA}")
    for label, rule in [("the rules before (--level-margin 0)", lambda b, key: {})] + rules():
        caught = quiet = both = 0
        before_all = []
        for key, (b, onset) in short.items():
            a = alarms_of(b, rule(b, ("short", key)))
            hit = any(onset <= i < onset + 50 for i in a)
            before = sum(1 for i in a if i < onset)
            caught += hit
            quiet += before <= 1
            both += hit and before <= 1
            before_all.append(before)
        raw, count = 0.0, 0
        for key, (b, (w, n)) in long.items():
            a = alarms_of(b, rule(b, ("long", key)))
            raw += ns.score_alarms(w, n, a)
            count += len(a)
        occ_alarms = episodes = 0
        for name, b in occ.items():
            a = alarms_of(b, rule(b, ("occ", name)))
            occ_alarms += len(a)
            last = None
            for i in a:
                episodes += last is None or i - last > 60
                last = i
        score = 100.0 * (raw + n_windows) / (2 * n_windows)
        print(f"  {label}: short runs caught {caught}/14, <= 1 before {quiet}/14, both "
              f"{both}/14 (before {before_all}); long files NAB {score:.1f} ({count} alarms); "
              f"Occupancy {occ_alarms} alarms, {episodes} episodes", flush=True)


if __name__ == "__main__":
    main()
