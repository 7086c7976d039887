"""Onset rules tried for issue 18's labelled-run goal (alarm within 50
readings of the onset, at most one alarm before it), the one kept marked
(the level distance with the dispersion term, `edgeloop anomaly`'s default
since; its line equals the binary's, benches/nab_score.txt): each computed
here in Python on top of `edgeloop
anomaly --level-margin 0` (Half-Space Trees' quantile threshold and the
residual test, the binary's alarms), measured on every measure of
benches/nab_score.py at once:

- NAB short runs: the 14 NAB files cut to 1,140 rows, first labelled
  anomaly at row 570 (nab_score.py's `short_slices`);
- Occupancy arrivals: UCI Occupancy's 10 arrivals as 1,140-row runs of the
  5 sensors, arrival at 570 (nab_score.py's `arrival_runs`);
- BasicMotions changes: 12 runs of the 6 channels of UEA BasicMotions, 570
  readings of one activity then 570 of another (nab_score.py's
  `motion_runs`);
- NAB long files: NAB score by alarms (standard profile);
- UCI Air Quality's 8 runs of 1,140 hourly readings (no labelled anomaly;
  nab_score.py's `air_runs`, added with the residual margin): alarms. Its
  missing values propagate here (a dispersion window holding one is not
  scored), where the binary skips them, so the level rules' alarms on it
  may differ from the binary's;
- UCI Occupancy's three files (no labelled anomaly): alarms and episodes
  (an alarm more than 60 rows after the previous one opens one).

The rules (alarms added to the binary's trees and residual alarms; each a
record rule unless said: a row alarms when its statistic exceeds `c` times
the largest statistic of the rows before it, from row 200, until row
1,250; per feature a robust z, |y - median| / (IQR / 1.349) of the
feature's earlier values of y, 0 before 50 of them or where the IQR is 0):

- `level`: the level rule before this change (y = the reading: Hampel's
  identifier with the IQR scale), features combined by the root sum of
  squares (`l2`), by `max`, or alarmed when either passes its own record
  (`l2|max`: a few of many sensors moving).
- `mean k`: y = the moving mean of the last k readings (the statistic of a
  moving-average chart: Roberts 1959; Montgomery, "Introduction to
  Statistical Quality Control", ch. 9), whose noise is smaller by about
  sqrt(k), so a sustained small shift stands out.
- `dispersion k`: y = the feature's mean absolute step |x_t - x_{t-1}|
  over the last k readings (the moving range of Shewhart's individuals
  chart, Montgomery section 6.4: how much the readings move, not where),
  for an onset inside levels already seen (a machine starting or stopping
  to shake); `ln(dispersion + 1e-12)` and `ln(max(dispersion,
  resolution))` (the resolution: the smallest non-zero step so far; the
  dispersion defined once k steps and a non-zero one exist) make a fall to
  a fifth count as a rise to five times. `+` in one l2 with the level's
  z-scores under one record (one distance), or `or ... its own record`:
  a second record rule beside the level rule.
- `residual limit max(10, c x record)`: the residual test before its
  quantile exists alarms only on a residual z above every earlier one by
  c (its earlier spikes raise the bar).
- `2 of 3`: an alarm of the early rules only when the rule also fired on
  one of the two readings before (a Western Electric run rule): for the
  level rule, over the record held before those three readings; for the
  residual test, while its limit is the fixed one.

Added with the residual margin (each on top of the kept rules; the
measures gain `motions recentred`, nab_score.py's BasicMotions runs with
each recording shifted to its activity's mean, and the count of the 36
runs of the first three measures caught with at most one alarm before):

- `residual limit also > m x the p quantile of the earlier residual z`:
  the residual test's limit is the largest of 10, the 0.999 quantile of
  the last 5,000 non-zero residual z-scores (once 1,000 were seen) and m
  times their p quantile (from the first): a spiky stream raises its own
  bar before calibration (kept: m 3, p 0.95, `--residual-margin`; the
  earlier lines are measured without it, the binary run with
  `--residual-margin 0`).
- `CUSUM of the signed robust z`: per feature of the level and/or the
  log-dispersion, (y - median) / (IQR / 1.349) of the earlier values, a
  two-sided tabular CUSUM with reference value k (Page, "Continuous
  inspection schemes", Biometrika 1954; Montgomery section 9.1), combined
  by the root sum of squares, alarmed as a record by a margin (the
  decision interval read off the run's own earlier values).
- `moving mean / median / min of w level distances`: a sustained shift
  against a swing, as a second record rule.
- `ln(max(dispersion k, resolution)) > c x its own record`: the
  dispersion term over a longer window (20 to 100 readings, which smooths a
  badminton player's swings and rests) as a second record rule.
- `residual z of ln(dispersion 5)`: the residual test on the
  log-dispersion of each feature (until row 1,250).
- `seasonal naive level`: the level rule on x_t - x_t-L, L a daily period
  read off the first rows' autocorrelation (none where it stays below 0.5).

Added as a new family (two windows, a spectrum, a nearest neighbour; each
on top of the kept rules, its statistic alarmed as a record rule by a
margin c, until row 1,250, unless said):

- `decay K`: the kept level rule with its record over the last K
  statistics only (K 50 to 400; replacing the record that never forgets,
  which one badminton swing sets).
- `c x the q quantile of its earlier values`: the kept level rule with
  the q quantile of all its earlier distances in place of their largest.
- `ks w ref r`: per feature the two-sample Kolmogorov-Smirnov statistic D
  of the last w readings against the r before them (KSWIN: Raab,
  Heusinger & Schleif, "Reactive soft prototype computing for concept
  drift streams", Neurocomputing 2020; River's `drift.KSWIN`), the largest
  over features.
- `energy w ref r`: the energy distance (Szekely & Rizzo, "Energy
  statistics", J. Stat. Plan. Inference 2013) between the last w
  multivariate readings and the r before them, each feature divided by the
  reference's IQR / 1.349 (0.001 of its largest magnitude where that is 0).
- `sr`: spectral residual (Ren et al., "Time-Series Anomaly Detection
  Service at Microsoft", KDD 2019): per feature over the last 100
  readings and 5 extrapolated ones, the saliency map of the log amplitude
  spectrum (its average filter of 3), the last reading's (S - mean of the
  21 before) / that mean, the largest over features.
- `mp m`: the left matrix profile (Yeh et al., "Matrix Profile I", ICDM
  2016; online, as DAMP: Lu et al., KDD 2022): the Euclidean distance of
  the last m readings (each feature divided by the IQR / 1.349 of the
  first 200 rows, their range where that is 0) to the nearest earlier
  m-reading subsequence not overlapping it, per value; `rising edge only`:
  one alarm per run of rows over the limit (a discord spans m rows).
- `its record before the window` (KS, energy): the record of the
  statistics of the rows before t - w only, whose windows do not hold the
  current window's readings (a window statistic rises over w readings, in
  steps each under a margin of its running record).

The last line: the ceiling of any rule added to the kept ones (a rule
added can only add alarms): the runs of the first three measures where
the kept rules already alarm more than once before the onset cannot count.

Run: python3 benches/nab_onset_rules.py [DATA_DIR] [BINARY] (as
nab_score.py, in the test venv); output committed as
benches/nab_onset_rules.txt.
"""
import bisect
import csv
import importlib.util
import math
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("nab_score", os.path.join(HERE, "nab_score.py"))
ns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ns)
OCCUPANCY = "Temperature,Humidity,Light,CO2,HumidityRatio"
RESIDUAL_CALIBRATED = 1030
UNTIL, WARMUP, MIN_HISTORY = 1250, 200, 50


def base(path, features):
    v = ns.edgeloop_json(path, features, ["--level-margin", "0", "--residual-margin", "0"])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) if r[c] != "" else math.nan for c in features.split(",")]
                  for r in rows])
    trees = [a for a, r in zip(v["alarms"], v["rules"]) if r in ("trees", "both")]
    residual = [a for a, r in zip(v["alarms"], v["rules"]) if r in ("residual", "both")]
    return {"x": x, "trees": trees, "residual": residual, "z": v["residual_z"]}


def transform(x, kind, k):
    n = min(len(x), UNTIL)
    x = x[:n]
    if kind == "raw":
        return x
    if kind == "mean":
        c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
        lo = np.maximum(np.arange(1, n + 1) - k, 0)
        return (c[1:] - c[lo]) / (np.arange(1, n + 1) - lo)[:, None]
    if kind == "logdispersion":
        d = transform(x, "dispersion", k)
        return np.log(d + 1e-12)
    if kind == "logdispersion_q":
        # ln(max(mean of the last k steps, the smallest non-zero step so
        # far)), NaN until k steps and a non-zero one exist (the binary's).
        out = np.full(x.shape, np.nan)
        for j in range(x.shape[1]):
            steps, q = [], 0.0
            for t in range(1, n):
                step = abs(x[t, j] - x[t - 1, j])
                steps.append(step)
                if step > 0 and (q == 0 or step < q):
                    q = step
                if len(steps) >= k and q > 0:
                    s = 0.0
                    for v in steps[-k:]:
                        s += v
                    out[t, j] = math.log(max(s / k, q))
        return out
    if kind == "dispersion":
        d = np.vstack([np.zeros((1, x.shape[1])), np.abs(np.diff(x, axis=0))])
        c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), d]), axis=0)
        lo = np.maximum(np.arange(1, n + 1) - k, 0)
        return (c[1:] - c[lo]) / (np.arange(1, n + 1) - lo)[:, None]
    raise ValueError(kind)


def robust_z(y):
    """Per row and feature |y - median| / (IQR / 1.349) over the earlier
    rows (0 before 50 of them or where the IQR is 0)."""
    n, d = y.shape
    z = np.zeros((n, d))
    if np.isnan(y).any():
        for j in range(d):
            col = y[:, j]
            for t in range(n):
                h = col[:t][~np.isnan(col[:t])]
                if len(h) < MIN_HISTORY or np.isnan(col[t]):
                    continue
                q25, med, q75 = np.quantile(h, [0.25, 0.5, 0.75])
                s = (q75 - q25) / 1.349
                if s > 0:
                    z[t, j] = abs(col[t] - med) / s
        return z
    for t in range(MIN_HISTORY, n):
        q25, med, q75 = np.quantile(y[:t], [0.25, 0.5, 0.75], axis=0)
        s = (q75 - q25) / 1.349
        ok = s > 0
        z[t, ok] = np.abs(y[t, ok] - med[ok]) / s[ok]
    return z


def record(stat, c):
    """Rows from 200 whose statistic exceeds c x the record of the rows
    before."""
    out, best = [], 0.0
    for t in range(len(stat)):
        if t >= WARMUP and best > 0 and stat[t] > c * best:
            out.append(t)
        best = max(best, stat[t])
    return out


def two_of_three(rows):
    s = set(rows)
    return [t for t in rows if (t - 1) in s or (t - 2) in s]


class Rules:
    def __init__(self):
        self.cache = {}

    def z(self, b, key, kind, k):
        ck = (key, kind, k)
        if ck not in self.cache:
            self.cache[ck] = robust_z(transform(b["x"], kind, k))
        return self.cache[ck]

    def stat(self, b, key, parts, combine):
        zs = np.hstack([self.z(b, key, kind, k) for kind, k in parts])
        if combine == "l2":
            return [np.sqrt((zs ** 2).sum(axis=1))]
        if combine == "max":
            return [zs.max(axis=1)]
        return [np.sqrt((zs ** 2).sum(axis=1)), zs.max(axis=1)]

    def rule(self, parts, combine, c):
        """One record rule on the statistic of `parts` (`both`: alarmed when
        the l2 or the max passes its own record)."""
        def f(b, key):
            extra = set()
            for s in self.stat(b, key, parts, combine):
                extra |= set(record(s, c))
            return sorted(set(b["trees"]) | set(b["residual"]) | extra)
        return f


    def either(self, specs):
        """Alarms of several record rules, each on its own statistic and
        record: specs of (parts, combine, c)."""
        def f(b, key):
            extra = set()
            for parts, combine, c in specs:
                for s in self.stat(b, key, parts, combine):
                    extra |= set(record(s, c))
            return sorted(set(b["trees"]) | set(b["residual"]) | extra)
        return f


def record_confirmed(stat, c):
    """Rows from 200 where this one and at least one of the two before
    exceed c x the record of the rows before those three (2 of 3)."""
    out, best = [], [0.0]
    for t in range(len(stat)):
        best.append(max(best[-1], stat[t]))
        # best[t] is the record of rows < t.
        if t >= WARMUP + 2:
            limit = c * best[t - 2]
            over = [stat[u] > limit for u in (t - 2, t - 1, t)]
            if best[t - 2] > 0 and over[2] and sum(over) >= 2:
                out.append(t)
    return out


def residual_record(b, c, floor=10.0, ready=30):
    """The residual test before its quantile exists with the limit max(floor,
    c x the largest residual z of the readings before); the binary's alarms
    after."""
    z, out, best = b["z"], [], 0.0
    for t in range(min(len(z), RESIDUAL_CALIBRATED)):
        if t >= ready and z[t] > max(floor, c * best):
            out.append(t)
        if t >= ready:
            best = max(best, z[t])
    return out + [a for a in b["residual"] if a >= RESIDUAL_CALIBRATED]


def quantile_sorted(h, p):
    """numpy's linear-interpolation quantile of the sorted list h."""
    pos = p * (len(h) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return h[lo] + (h[hi] - h[lo]) * (pos - lo)


def residual_margin(b, p, m, floor=10.0, history=5000, calibration=1000, quantile=0.999):
    """The residual test over the whole run with its limit the largest of
    `floor`, the 0.999 quantile of the last 5,000 non-zero residual
    z-scores (once 1,000 were seen) and `m` times their `p` quantile (once
    one was seen; m 0: not): the binary's rule with `--residual-margin m
    --residual-margin-quantile p` (m 0: the binary's alarms before)."""
    key = ("residual_margin", p, m)
    if key in b:
        return b[key]
    z, out, held, recent = b["z"], [], [], []
    for t in range(30, len(z)):
        limit = floor
        if len(recent) >= calibration:
            limit = max(limit, quantile_sorted(held, quantile))
        if held and m > 0:
            limit = max(limit, m * quantile_sorted(held, p))
        if z[t] > limit:
            out.append(t)
        if z[t] > 0:
            bisect.insort(held, z[t])
            recent.append(z[t])
            if len(recent) > history:
                held.pop(bisect.bisect_left(held, recent.pop(0)))
    b[key] = out
    return out


def signed_z(y):
    """Per row and feature (y - median) / (IQR / 1.349) over the earlier
    finite rows (0 before 50 of them, where the IQR is 0 or y is missing)."""
    n, d = y.shape
    z = np.zeros((n, d))
    for j in range(d):
        held = []
        for t in range(n):
            v = y[t, j]
            if len(held) >= MIN_HISTORY and not np.isnan(v):
                s = (quantile_sorted(held, 0.75) - quantile_sorted(held, 0.25)) / 1.349
                if s > 0:
                    z[t, j] = (v - quantile_sorted(held, 0.5)) / s
            if not np.isnan(v):
                bisect.insort(held, v)
    return z


def cusum_stat(zs, k):
    """Two-sided tabular CUSUM per column of zs with reference value k
    (Page 1954; Montgomery section 9.1): max(C+, C-) per column, combined by
    the root sum of squares."""
    cp = np.zeros(zs.shape[1])
    cm = np.zeros(zs.shape[1])
    out = np.zeros(len(zs))
    for t in range(len(zs)):
        cp = np.maximum(0.0, cp + zs[t] - k)
        cm = np.maximum(0.0, cm - zs[t] - k)
        out[t] = math.sqrt(float((np.maximum(cp, cm) ** 2).sum()))
    return out


def moving(stat, w, how):
    """The moving mean, median or min of the last w values of stat."""
    f = {"mean": np.mean, "median": np.median, "min": np.min}[how]
    return np.array([f(stat[max(0, t - w + 1):t + 1]) for t in range(len(stat))])


def season_lag(x, lo=10, hi=100, warm=200, min_acf=0.5):
    """Per feature the lag in lo..hi with the largest autocorrelation of the
    first `warm` rows, when above min_acf (None: no season)."""
    lags = []
    for j in range(x.shape[1]):
        c = x[:warm, j]
        c = c[~np.isnan(c)]
        c = c - c.mean()
        den = float((c * c).sum())
        best, lag = min_acf, None
        for L in range(lo, min(hi, len(c) // 2)):
            a = float((c[L:] * c[:-L]).sum()) / den if den > 0 else 0.0
            if a > best:
                best, lag = a, L
        lags.append(lag)
    return lags


def record_recent(stat, c, k):
    """Rows from 200 whose statistic exceeds c x the largest of the (finite)
    statistics of the last k rows before (a record that forgets)."""
    out, held = [], []
    for t in range(len(stat)):
        v = stat[t]
        if t >= WARMUP and held and max(held[-k:]) > 0 and v > c * max(held[-k:]):
            out.append(t)
        if not math.isnan(v):
            held.append(v)
    return out


def record_quantile(stat, c, q):
    """Rows from 200 whose statistic exceeds c x the q quantile of the
    (finite) statistics of the rows before (a record that a single swing
    does not set)."""
    out, held = [], []
    for t in range(len(stat)):
        v = stat[t]
        if t >= WARMUP and held:
            limit = quantile_sorted(held, q)
            if limit > 0 and v > c * limit:
                out.append(t)
        if not math.isnan(v):
            bisect.insort(held, v)
    return out


def record_lagged(stat, c, lag):
    """Rows from 200 whose statistic exceeds c x the record of the rows
    before t - lag (the statistics whose windows end before the current
    window's first reading)."""
    out, best = [], [0.0]
    for t in range(len(stat)):
        v = stat[t]
        limit = best[t - lag] if t >= lag else 0.0
        if t >= WARMUP and limit > 0 and v > c * limit:
            out.append(t)
        best.append(best[-1] if math.isnan(v) else max(best[-1], v))
    return out


def ks_stat(x, w, ref):
    """Per row the largest over features of the two-sample KS statistic of
    the last w readings against the ref readings before them (NaN where a
    window holds a missing value)."""
    n = min(len(x), UNTIL)
    out = np.full(n, np.nan)
    for t in range(w + ref - 1, n):
        best = 0.0
        for j in range(x.shape[1]):
            a = np.sort(x[t - w - ref + 1:t - w + 1, j])
            b = np.sort(x[t - w + 1:t + 1, j])
            if np.isnan(a).any() or np.isnan(b).any():
                best = math.nan
                break
            v = np.concatenate([a, b])
            fa = np.searchsorted(a, v, "right") / len(a)
            fb = np.searchsorted(b, v, "right") / len(b)
            best = max(best, float(np.abs(fa - fb).max()))
        out[t] = best
    return out


def energy_stat(x, w, ref):
    """Per row the energy distance 2 E|A - B| - E|A - A'| - E|B - B'| of the
    last w readings (B) against the ref readings before them (A), each
    feature divided by A's IQR / 1.349 (0.001 of A's largest magnitude where
    that is 0; NaN where a window holds a missing value)."""
    n = min(len(x), UNTIL)
    out = np.full(n, np.nan)
    for t in range(w + ref - 1, n):
        a = x[t - w - ref + 1:t - w + 1]
        b = x[t - w + 1:t + 1]
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        q25, q75 = np.quantile(a, [0.25, 0.75], axis=0)
        s = (q75 - q25) / 1.349
        s = np.where(s > 0, s, np.maximum(np.abs(a).max(axis=0) * 1e-3, 1e-9))
        a, b = a / s, b / s

        def mean_dist(p, q):
            return float(np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1)).mean())
        out[t] = 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
    return out


def sr_stat(x, q=100, m=5, hq=3, z=21):
    """Spectral residual (Ren et al. 2019) per row: per feature, the last q
    readings extended by m points (x_(q-m+1) + m g, g the mean slope of the
    last reading to the m before), the saliency map |IFFT(exp(R + iP))| of
    the log amplitude spectrum's residual R from its average filter of hq;
    the last reading's (S - mean of the z before) / that mean, the largest
    over features."""
    n = min(len(x), UNTIL)
    out = np.full(n, np.nan)
    for t in range(q - 1, n):
        best = 0.0
        for j in range(x.shape[1]):
            v = x[t - q + 1:t + 1, j]
            if np.isnan(v).any():
                best = math.nan
                break
            g = np.mean([(v[-1] - v[-1 - i]) / i for i in range(1, m + 1)])
            f = np.fft.fft(np.concatenate([v, np.full(m, v[-m] + g * m)]))
            log_a = np.log(np.maximum(np.abs(f), 1e-12))
            r = log_a - np.convolve(log_a, np.ones(hq) / hq, mode="same")
            sal = np.abs(np.fft.ifft(np.exp(r + 1j * np.angle(f))))
            avg = sal[q - 1 - z:q - 1].mean()
            best = max(best, (sal[q - 1] - avg) / avg if avg > 0 else 0.0)
        out[t] = best
    return out


def mp_stat(x, m):
    """The left matrix profile per row (from row 2m): the root mean square
    difference of the last m readings to the nearest earlier m-reading
    subsequence ending at least m rows before, each feature divided by the
    IQR / 1.349 of the first 200 rows (their range where that is 0, else
    1); missing values left out of the sum."""
    n = min(len(x), UNTIL)
    x = x[:n]
    h = x[:WARMUP]
    q25, q75 = np.nanquantile(h, [0.25, 0.75], axis=0)
    s = (q75 - q25) / 1.349
    span = np.nanmax(h, axis=0) - np.nanmin(h, axis=0)
    x = x / np.where(s > 0, s, np.where(span > 0, span, 1.0))
    subs = np.stack([x[i - m + 1:i + 1].ravel() for i in range(m - 1, n)])
    out = np.full(n, np.nan)
    for t in range(2 * m, n):
        cur = subs[t - m + 1]
        if np.isnan(cur).any():
            continue
        d = np.nansum((subs[:t - 2 * m + 2] - cur) ** 2, axis=1) / cur.size
        out[t] = math.sqrt(float(d.min()))
    return out


def rising(rows):
    """The rows of `rows` whose row before is not in it."""
    s = set(rows)
    return [t for t in rows if t - 1 not in s]


class More:
    """The rules tried after the level rule's dispersion term, each on top
    of the kept level rule (and, where said, the residual margin)."""

    def __init__(self, r):
        self.r = r
        self.cache = {}

    def level(self, b, key):
        return self.r.stat(b, key, [("raw", 1), ("logdispersion_q", 5)], "l2")[0]

    def kept(self, p=0.95, m=3.0, c=1.25):
        def f(b, key):
            return sorted(set(b["trees"]) | set(residual_margin(b, p, m))
                          | set(record(self.level(b, key), c)))
        return f

    def plus(self, extra):
        base = self.kept()

        def f(b, key):
            return sorted(set(base(b, key)) | set(extra(b, key)))
        return f

    def zs(self, b, key, kind):
        ck = ("signed", key, kind)
        if ck not in self.cache:
            y = b["x"][:UNTIL] if kind == "raw" else transform(b["x"], "logdispersion_q", 5)
            self.cache[ck] = signed_z(y)
        return self.cache[ck]

    def cusum(self, kinds, k, c):
        def f(b, key):
            zs = np.hstack([self.zs(b, key, kind) for kind in kinds])
            return record(cusum_stat(zs, k), c)
        return self.plus(f)

    def sustained(self, w, how, c):
        def f(b, key):
            return record(moving(self.level(b, key), w, how), c)
        return self.plus(f)

    def dispersion_residual(self, floor, m):
        def f(b, key):
            ck = ("dispersion residual", key)
            if ck not in self.cache:
                y = transform(b["x"], "logdispersion_q", 5)
                zf = residual_z_features(y)
                self.cache[ck] = np.nan_to_num(np.nanmax(np.where(np.isnan(zf), -1, zf), axis=1)
                                               .clip(0))
            return residual_margin({"z": self.cache[ck]}, 0.95, m, floor=floor,
                                   calibration=10 ** 9)
        return self.plus(f)

    def seasonal(self, hi, c):
        def f(b, key):
            x = b["x"][:UNTIL]
            lags = season_lag(x, hi=hi, warm=max(200, 2 * hi))
            if all(L is None for L in lags):
                return []
            y = np.full(x.shape, np.nan)
            for j, L in enumerate(lags):
                if L:
                    y[L:, j] = x[L:, j] - x[:-L, j]
            z = robust_z(y)
            return record(np.sqrt((z ** 2).sum(axis=1)), c)
        return self.plus(f)

    def two_window(self, name, stat, c, edge=False, lag=0):
        def f(b, key):
            ck = (name, key)
            if ck not in self.cache:
                self.cache[ck] = stat(b["x"])
            a = record_lagged(self.cache[ck], c, lag) if lag else record(self.cache[ck], c)
            return rising(a) if edge else a
        return self.plus(f)

    def decay(self, k, c):
        def f(b, key):
            return sorted(set(b["trees"]) | set(residual_margin(b, 0.95, 3.0))
                          | set(record_recent(self.level(b, key), c, k)))
        return f
    def quantile_record(self, q, c):
        def f(b, key):
            return sorted(set(b["trees"]) | set(residual_margin(b, 0.95, 3.0))
                          | set(record_quantile(self.level(b, key), c, q)))
        return f


def residual_z_features(x, alpha=0.05):
    """`ResidualZ` per row and feature (score before learning; NaN without a
    scale or for a missing value): |x - EWMA| / max(MAD, long-run MAD / 2,
    resolution, 0.001 max(|EWMA|, 1))."""
    n, d = x.shape
    z = np.full((n, d), np.nan)
    mean, mad, long_, last = [math.nan] * d, [math.nan] * d, [math.nan] * d, [math.nan] * d
    res = [0.0] * d
    for t in range(n):
        for i in range(d):
            v = x[t, i]
            if not math.isnan(mad[i]) and math.isfinite(v):
                scale = max(mad[i], 0.5 * long_[i], res[i], 1e-3 * max(abs(mean[i]), 1.0))
                if scale > 0:
                    z[t, i] = abs(v - mean[i]) / scale
        for i in range(d):
            v = x[t, i]
            if not math.isfinite(v):
                continue
            step = abs(v - last[i])
            if step > 0 and (res[i] == 0 or step < res[i]):
                res[i] = step
            last[i] = v
            if math.isnan(mean[i]):
                mean[i] = v
                continue
            r = v - mean[i]
            if math.isnan(mad[i]):
                mad[i] = long_[i] = abs(r)
            else:
                mad[i] += alpha * (abs(r) - mad[i])
                long_[i] += 0.001 * (abs(r) - long_[i])
            mean[i] += alpha * r
    return z


def candidates(r):
    out = [("the rules before the level rule (--level-margin 0)",
            lambda b, key: sorted(set(b["trees"]) | set(b["residual"])))]
    raw = [("raw", 1)]
    out.append(("level l2, c 1.25 (the level rule before: --level-dispersion 0)",
                r.rule(raw, "l2", 1.25)))
    out.append(("level max, c 1.25", r.rule(raw, "max", 1.25)))
    out.append(("level l2|max, c 1.25", r.rule(raw, "both", 1.25)))
    for k in (5, 10, 20):
        for c in (1.25, 1.5):
            out.append((f"mean {k}, l2, c {c}", r.rule([("mean", k)], "l2", c)))
    out.append(("mean 10, l2|max, c 1.25", r.rule([("mean", 10)], "both", 1.25)))
    out.append(("level l2 + mean 10 (one l2), c 1.25", r.rule(raw + [("mean", 10)], "l2", 1.25)))
    for k, c in ((5, 1.25), (10, 1.2), (10, 1.25), (10, 1.3), (10, 1.5), (15, 1.25),
                 (20, 1.25), (20, 1.5)):
        out.append((f"level l2 + dispersion {k} (one l2), c {c}",
                    r.rule(raw + [("dispersion", k)], "l2", c)))
    out.append(("level l2 + dispersion 10, max, c 1.25",
                r.rule(raw + [("dispersion", 10)], "max", 1.25)))
    for k in (10, 20):
        out.append((f"mean 10 + dispersion {k} (one l2), c 1.25",
                    r.rule([("mean", 10), ("dispersion", k)], "l2", 1.25)))
    for k in (5, 10, 20):
        for c in (1.25, 1.5, 2.0):
            out.append((f"level l2, c 1.25, or dispersion {k} > {c} x its own record",
                        r.either([(raw, "l2", 1.25), ([("dispersion", k)], "l2", c)])))
    for k, c in ((10, 1.25), (10, 1.5), (20, 1.25)):
        out.append((f"level l2 + ln(dispersion {k} + 1e-12) (one l2), c {c}",
                    r.rule(raw + [("logdispersion", k)], "l2", c)))
        out.append((f"level l2, c 1.25, or ln(dispersion {k} + 1e-12) > {c} x its own record",
                    r.either([(raw, "l2", 1.25), ([("logdispersion", k)], "l2", c)])))
    for k, c in ((3, 1.25), (4, 1.25), (5, 1.2), (5, 1.25), (5, 1.3), (7, 1.25), (10, 1.25),
                 (10, 1.5), (20, 1.25)):
        kept = " (kept; the binary's default with the residual margin, below)" if (
            k, c) == (5, 1.25) else ""
        out.append((f"level l2 + ln(max(dispersion {k}, resolution)) (one l2), c {c}{kept}",
                    r.rule(raw + [("logdispersion_q", k)], "l2", c)))
    for k in (5, 10, 20):
        out.append((f"level l2, c 1.25, or ln(max(dispersion {k}, resolution)) > 1.25 x its "
                    "own record",
                    r.either([(raw, "l2", 1.25), ([("logdispersion_q", k)], "l2", 1.25)])))
    shipped = r.rule(raw, "l2", 1.25)
    for c in (1.0, 1.25):
        def f(b, key, cc=c):
            a = set(shipped(b, key)) - set(b["residual"])
            return sorted(a | set(residual_record(b, cc)))
        out.append((f"level l2, c 1.25; residual limit max(10, {c} x record) until calibrated", f))

    def confirmed(level_c, confirm_level, confirm_residual):
        def f(b, key):
            stat = r.stat(b, key, raw, "l2")[0]
            level = record_confirmed(stat, level_c) if confirm_level else record(stat, level_c)
            residual = b["residual"]
            if confirm_residual:
                residual = two_of_three([a for a in residual if a < RESIDUAL_CALIBRATED]) + [
                    a for a in residual if a >= RESIDUAL_CALIBRATED]
            return sorted(set(b["trees"]) | set(residual) | set(level))
        return f
    out.append(("level l2, c 1.25; residual 2 of 3 until calibrated", confirmed(1.25, False, True)))
    for c in (1.1, 1.25):
        out.append((f"level l2, c {c}, 2 of 3 over the record before them",
                    confirmed(c, True, False)))
        out.append((f"level l2, c {c}, 2 of 3 over the record before them; residual 2 of 3 "
                    "until calibrated", confirmed(c, True, True)))
    more = More(r)
    for p, m in ((0.95, 2.5), (0.95, 3.0), (0.95, 3.5), (0.95, 4.0), (0.9, 3.0), (0.9, 4.0),
                 (0.99, 1.5), (0.99, 2.0), (0.99, 3.0)):
        kept = " (kept: the binary's default)" if (p, m) == (0.95, 3.0) else ""
        out.append((f"level l2 + ln(max(dispersion 5, resolution)), c 1.25; residual limit also "
                    f"> {m} x the {p} quantile of the earlier residual z{kept}",
                    more.kept(p, m)))
    out.append(("the same, level c 1.2", more.kept(c=1.2)))
    for kinds in (("raw",), ("dispersion",), ("raw", "dispersion")):
        for k in (0.5, 1.0):
            for c in (1.25, 1.5):
                out.append((f"kept + CUSUM of the signed robust z of {' and '.join(kinds)} (k {k}, "
                            f"root sum of squares) > {c} x its own record",
                            more.cusum(kinds, k, c)))
    for how in ("mean", "median", "min"):
        for w in (5, 10, 20):
            out.append((f"kept + moving {how} of {w} level distances > 1.25 x its own record",
                        more.sustained(w, how, 1.25)))
    for floor, m in ((10.0, 0.0), (10.0, 3.0), (15.0, 3.0)):
        out.append((f"kept + residual z of ln(dispersion 5) > {floor} (margin {m} x q0.95)",
                    more.dispersion_residual(floor, m)))
    for k, c in ((20, 1.25), (20, 1.5), (30, 1.25), (40, 1.25), (50, 1.25), (50, 1.5),
                 (60, 1.25), (100, 1.25)):
        out.append((f"kept + ln(max(dispersion {k}, resolution)) > {c} x its own record",
                    more.plus(lambda b, key, k=k, c=c: record(
                        r.stat(b, key, [("logdispersion_q", k)], "l2")[0], c))))
    for hi in (100, 300):
        out.append((f"kept + seasonal naive level (x_t - x_t-L, L the lag in 10..{hi} of the "
                    f"largest autocorrelation > 0.5 of the first {max(200, 2 * hi)} rows) > 1.5 x "
                    "its own record", more.seasonal(hi, 1.5)))
    for k in (50, 100, 200, 400):
        for c in (1.25, 1.5):
            out.append((f"kept, the level record over the last {k} rows only (decay), c {c}",
                        more.decay(k, c)))
    for q, c in ((0.95, 2.0), (0.95, 3.0), (0.99, 1.5), (0.99, 2.0), (0.999, 1.25), (0.999, 1.5)):
        out.append((f"kept, the level rule against c {c} x the {q} quantile of its earlier "
                    "values (not the record)", more.quantile_record(q, c)))
    for w, ref in ((30, 100), (50, 200)):
        for c in (1.1, 1.25):
            out.append((f"kept + ks w {w} ref {ref} > {c} x its own record",
                        more.two_window(f"ks {w} {ref}", lambda x, w=w, ref=ref: ks_stat(x, w, ref),
                                        c)))
    for w, ref, c in ((20, 100, 1.25), (20, 100, 1.5), (20, 100, 2.0), (20, 100, 3.0),
                      (50, 200, 1.25), (50, 200, 1.5)):
        out.append((f"kept + energy w {w} ref {ref} > {c} x its own record",
                    more.two_window(f"energy {w} {ref}",
                                    lambda x, w=w, ref=ref: energy_stat(x, w, ref), c)))
    for w, ref, c in ((30, 100, 1.25), (50, 200, 1.25), (50, 200, 1.5)):
        out.append((f"kept + ks w {w} ref {ref} > {c} x its record before the window",
                    more.two_window(f"ks {w} {ref}", lambda x, w=w, ref=ref: ks_stat(x, w, ref),
                                    c, lag=w)))
    for c in (1.5, 3.0):
        out.append((f"kept + energy w 20 ref 100 > {c} x its record before the window",
                    more.two_window("energy 20 100", lambda x: energy_stat(x, 20, 100), c,
                                    lag=20)))
    for c in (1.25, 1.5):
        out.append((f"kept + sr > {c} x its own record", more.two_window("sr", sr_stat, c)))
    for m, c, edge in ((10, 1.25, False), (10, 1.5, False), (30, 1.25, False), (30, 1.5, False),
                       (10, 1.25, True), (10, 1.5, True)):
        edge_label = ", rising edge only" if edge else ""
        out.append((f"kept + mp {m} > {c} x its own record{edge_label}",
                    more.two_window(f"mp {m}", lambda x, m=m: mp_stat(x, m), c, edge)))
    return out


def main():
    files = ns.load()
    prepared = [(ns.row_weights([r[0] for r in rows], wins), rows, path, key, labs)
                for key, path, rows, wins, labs in files]
    tmp = tempfile.mkdtemp(prefix="nab_onset_")
    onsets = []  # (measure, key, base, onset, tolerance)
    for key, path, onset, _ in ns.short_slices(prepared, tmp):
        onsets.append(("NAB short", key, base(path, "value"), onset, 0))
    for when, path in ns.arrival_runs(tmp):
        onsets.append(("arrivals", when, base(path, OCCUPANCY), ns.SHORT_ONSET, 5))
    for name, path in ns.motion_runs(tmp):
        onsets.append(("motions", name, base(path, ns.MOTION_FEATURES), ns.SHORT_ONSET, 0))
    for name, path in ns.motion_runs(tmp, recentred=True):
        onsets.append(("motions recentred", name, base(path, ns.MOTION_FEATURES), ns.SHORT_ONSET,
                       0))
    long = [(key, base(path, "value"), wn) for wn, _, path, key, _ in prepared]
    occ = [(name, base(os.path.join(ns.DATA, "occupancy_uci", name), OCCUPANCY))
           for name in ("datatest.txt", "datatraining.txt", "datatest2.txt")]
    air = [base(path, ns.AIR_FEATURES) for path in ns.air_runs(tmp)]
    n_windows = sum(n for _, _, (_, n) in long)
    print(f"Onset rules tried for issue 18 (benches/nab_onset_rules.py); data {ns.DATA}")
    r = Rules()
    for label, rule in candidates(r):
        parts = []
        total = 0
        for measure in ("NAB short", "arrivals", "motions", "motions recentred"):
            runs = [o for o in onsets if o[0] == measure]
            caught = both = 0
            before_all = []
            for _, key, b, onset, tol in runs:
                a = rule(b, (measure, key))
                hit = any(onset - tol <= i < onset + 50 for i in a)
                before = sum(1 for i in a if i < onset - tol)
                caught += hit
                both += hit and before <= 1
                before_all.append(before)
            total += both if measure != "motions recentred" else 0
            parts.append(f"{measure} {both}/{len(runs)} (caught {caught}, before {before_all})")
        raw, count = 0.0, 0
        for key, b, (w, n) in long:
            a = rule(b, ("long", key))
            raw += ns.score_alarms(w, n, a)
            count += len(a)
        occ_alarms = episodes = 0
        for name, b in occ:
            a = rule(b, ("occ", name))
            occ_alarms += len(a)
            last = None
            for i in a:
                episodes += last is None or i - last > 60
                last = i
        score = 100.0 * (raw + n_windows) / (2 * n_windows)
        print(f"  {label}: caught with <= 1 before: {total}/36 (NAB short, arrivals, motions); "
              f"{'; '.join(parts)}; NAB long {score:.1f} "
              f"({count} alarms); Occupancy {occ_alarms} alarms, {episodes} episodes; Air Quality "
              f"{sum(len(rule(b, ('air', i))) for i, b in enumerate(air))} alarms", flush=True)
    ceiling(r, onsets)


def ceiling(r, onsets):
    """The ceiling of a rule added to the kept ones, and for each run the
    kept rules miss with at most one alarm before: the largest of each new
    statistic within 50 readings after the onset over its largest before
    (from the first row; in brackets from row 200)."""
    kept = More(r).kept()
    spoilt = [f"{m} {key}" for m, key, b, onset, tol in onsets if m != "motions recentred"
              and sum(1 for i in kept(b, (m, key)) if i < onset - tol) > 1]
    print(f"  ceiling of a rule added to the kept ones (which can only add alarms): "
          f"{36 - len(spoilt)}/36; the kept rules alarm more than once before the onset of "
          f"{len(spoilt)}: {', '.join(spoilt)}")
    stats = (("level", lambda b, key: More(r).level(b, key)),
             ("mp 10", lambda b, key: mp_stat(b["x"], 10)),
             ("mp 30", lambda b, key: mp_stat(b["x"], 30)),
             ("energy 20 100", lambda b, key: energy_stat(b["x"], 20, 100)),
             ("ks 50 200", lambda b, key: ks_stat(b["x"], 50, 200)),
             ("sr", lambda b, key: sr_stat(b["x"])))
    for m, key, b, onset, tol in onsets:
        if m == "motions recentred":
            continue
        a = kept(b, (m, key))
        before = sum(1 for i in a if i < onset - tol)
        if before > 1 or any(onset - tol <= i < onset + 50 for i in a):
            continue
        ratios = []
        for name, f in stats:
            stat = np.asarray(f(b, (m, key)), float)
            after = np.nanmax(stat[onset - tol:onset + 50])
            ratios.append(f"{name} {after / np.nanmax(stat[:onset - tol]):.2f} "
                          f"({after / np.nanmax(stat[WARMUP:onset - tol]):.2f})")
        print(f"  missed by the kept rules, <= 1 before: {m} {key}: the largest statistic "
              f"within 50 after the onset over the largest before it (from row 200): "
              f"{', '.join(ratios)}")


if __name__ == "__main__":
    main()
