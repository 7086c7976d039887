"""NAB scores of `edgeloop anomaly` and River's HalfSpaceTrees on the shipped
NAB files (issue 18), and the labelled-run onset measurement.

The scorer follows the Numenta Anomaly Benchmark's (Lavin & Ahmad, "Evaluating
real-time anomaly detection algorithms: the Numenta Anomaly Benchmark",
IEEE ICMLA 2015; numenta/NAB `nab/sweeper.py`, `nab/scorer.py`, standard
profile of `config/profiles.json`: A_TP = 1, A_FP = 0.11, A_FN = 1),
written here from that description:

- The labelled windows are `labels/combined_windows.json`. A detection inside
  a window at row i scores `A_TP · σ(y) / σ(-1)` with `σ(y) = 2 / (1 +
  exp(5y)) - 1` and `y = -(right - i + 1) / width` (right: the window's last
  row; width: its rows): the earliest detection scores about A_TP, one at the
  right edge about 0. Only the best (earliest) detection of a window counts;
  a window without one scores -A_FN.
- A detection outside every window scores `A_FP · σ(y)`, y = (rows past the
  last window's right edge) / (that window's width - 1), σ = -1 for y ≥ 3 or
  before any window: a detection just after a window costs little, a
  detection far from any window costs A_FP.
- The first min(⌊0.15 · rows⌋, 750) rows of a file are probationary: their
  detections are not scored (their windows still need a detection).
- The corpus score is normalised as NAB's: `100 · (raw - null) / (perfect -
  null)`, null = every window missed (-A_FN each), perfect = every window
  detected at its first row (A_TP each).

NAB scores a detector's anomaly scores at the threshold that maximises the
corpus score, chosen on the corpus itself. Both detectors here are scored at
that best threshold over their scores (the scores are equal, River's
`MinMaxScaler() | HalfSpaceTrees(seed=42)` being what edgeloop computes), and,
as an operator sees them, by their alarms: edgeloop's (its default rules,
the daemon's: a score above the `--quantile` of the last `--history` scores
once `--calibration` were seen, for `--persistence` of the last
`--persistence-window` readings; or a reading more than `--residual-z`
smoothed mean absolute deviations from its EWMA and more than the
`--quantile` of the earlier residual z-scores; or, until the trees'
threshold can exist, a level distance above `--level-margin` times the
largest before it, from row `--level-warmup` on, the distance with the
dispersion term of `--level-dispersion` steps; no look at the labels; the
trees alone, the first rule, is a later setting) against River's own
alarm rule, `anomaly.QuantileFilter(HalfSpaceTrees(seed=42), q)` (a running
quantile of the scores, the detector not learning the readings it flags).

Onset: for each file, the row of its first labelled anomaly
(`combined_labels.json`); a run is detected when an alarm falls within its
first 50 rows from the onset on, and the alarms before the onset are counted;
each file's line also shows the largest score and residual z within those 50
rows and the threshold and residual limit at the end of the file.

Short runs (issue 18's held-back runs are short: a pump stream of about
1,140 readings with the first anomaly about half-way): for each file, the
1,140 rows with its first labelled anomaly at row 570 (from the file's first
row when fewer come before it; shorter at a file's end), written to a
temporary CSV and scored by `edgeloop anomaly` from that slice's first row:
caught (an alarm within 50 rows from the onset on), alarms before the
onset, and caught with at most one alarm before (the issue's goal: >= 80 %
of runs). In such a run the trees' threshold never exists (it needs
`--window` + `--calibration` = 1,250 rows); the level rule
(`--level-margin`, `--level-warmup`) is the alarm made for it.

False alarms beyond NAB: UCI Occupancy's three files (1-minute readings of 5
room sensors, no labelled anomaly, normal days with lights switched on and
off), each scored from its first row: alarms and alarm episodes (`edgeloop
anomaly`'s `episodes`, the daemon's definition: an alarm more than
`--episode-gap` rows, 60, after the previous one).

Multivariate onsets: UCI Occupancy's arrivals, each first occupied minute
after at least 8 empty hours, as runs of 1,140 readings of the 5 sensors
with the arrival at row 570 (`arrival_runs`): the short labelled runs' shape
with several sensors moving at once (lights, CO2, temperature), after a
quiet night whose sensors sit on one value for an hour at a time.

Changes of activity: UEA BasicMotions (Clements et al.; the UEA
multivariate time series classification archive, Bagnall et al. 2018,
arXiv:1811.00075; as shipped in aeon 1.6.0, BSD-3-Clause, see
../shared/data/SOURCES.md), a smart watch's 3-axis accelerometer and
gyroscope at 10 readings a second while standing, walking, running or
playing badminton, as 12 runs of 1,140 readings with the change of
activity at row 570 (`motion_runs`): a multivariate onset that changes how
much the readings move more than their level. Nothing of it is copied
into the repository.

False alarms on short multivariate runs without an onset: UCI Air
Quality's hourly readings of 8 sensors cut into 8 runs of 1,140
(`air_runs`).

Run: python3 benches/nab_score.py [DATA_DIR] [BINARY] (defaults
../shared/data and target/debug/edgeloop), from the repository root, in the
test venv (`eval "$(tests/run.sh --setup)"`: River 0.26); output committed as
benches/nab_score.txt.
"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

from river import anomaly, preprocessing

DATA = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
BINARY = sys.argv[2] if len(sys.argv) > 2 else "target/debug/edgeloop"
A_TP, A_FP, A_FN = 1.0, 0.11, 1.0
SETTINGS = [
    # (label, edgeloop anomaly flags, River QuantileFilter q)
    ("defaults (window 250; quantile 0.999 of the last 5000 scores after 1000, "
     "2 of 5 rows; or residual z > 10, > its own 0.999 quantile and > 3 x its own "
     "0.95 quantile, alpha 0.05, after 30 rows; or, in the first 1250 rows, the level "
     "distance > 1.25 x its record, after 200 rows, the distance with the dispersion "
     "term over 5 steps)", [], 0.999),
    ("the residual limit before its own-quantile margin (--residual-margin 0)",
     ["--residual-margin", "0"], 0.999),
    ("2 in a row (--persistence-window 2)", ["--persistence-window", "2"], 0.999),
    ("2 of 3 rows (--persistence-window 3)", ["--persistence-window", "3"], 0.999),
    ("2 of 10 rows (--persistence-window 10)", ["--persistence-window", "10"], 0.999),
    ("Half-Space Trees alone (--persistence 1 --residual-z 0)",
     ["--persistence", "1", "--residual-z", "0"], 0.999),
    ("persistence 1 (every score above the threshold), residual z > 10",
     ["--persistence", "1"], 0.999),
    ("residual z alone with the fixed limit 10 (--calibration 1000000: the trees "
     "never alarm and the limit never adapts)",
     ["--calibration", "1000000", "--history", "1000000"], 0.999),
    ("residual z > 8", ["--residual-z", "8"], 0.999),
    ("residual z > 15", ["--residual-z", "15"], 0.999),
    ("residual alpha 0.2", ["--residual-alpha", "0.2"], 0.999),
    ("quantile 0.995", ["--quantile", "0.995"], 0.995),
    ("quantile 0.99", ["--quantile", "0.99"], 0.99),
    ("quantile 0.99, history 1000", ["--quantile", "0.99", "--history", "1000"], 0.99),
    ("quantile 0.999, history 2000", ["--history", "2000"], 0.999),
    ("window 100", ["--window", "100"], 0.999),
    ("the rules before the level rule (--level-margin 0 --residual-margin 0)",
     ["--level-margin", "0", "--residual-margin", "0"], 0.999),
    ("residual margin 2 x the 0.99 quantile",
     ["--residual-margin", "2", "--residual-margin-quantile", "0.99"], 0.999),
    ("residual margin 4 x the 0.95 quantile", ["--residual-margin", "4"], 0.999),
    ("the level rule on the levels alone (--level-dispersion 0)",
     ["--level-dispersion", "0"], 0.999),
    ("level dispersion over 10 steps", ["--level-dispersion", "10"], 0.999),
    ("level margin 1.2", ["--level-margin", "1.2"], 0.999),
    ("level margin 1.3", ["--level-margin", "1.3"], 0.999),
    ("level margin 1.1", ["--level-margin", "1.1"], 0.999),
    ("level warm-up 100", ["--level-warmup", "100"], 0.999),
    ("level warm-up 300", ["--level-warmup", "300"], 0.999),
]


def sigma(y):
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def row_weights(times, windows):
    """Per row: (window id or None, the score of a detection there), None
    for probationary rows."""
    n = len(times)
    probation = min(math.floor(0.15 * n), 0.15 * 5000)
    index = {t: i for i, t in reversed(list(enumerate(times)))}
    spans = []
    for a, b in windows:
        a, b = a[:19], b[:19]
        if a in index and b in index:
            spans.append((index[a], index[b]))
    out, prev_right, prev_width, w = [], None, None, 0
    for i in range(n):
        inside = next((k for k, (a, b) in enumerate(spans) if a <= i <= b), None)
        if inside is not None:
            a, b = spans[inside]
            width = b - a + 1
            score = A_TP * sigma(-(b - i + 1) / width) / sigma(-1.0)
            if i == b:
                prev_right, prev_width = b, width
        else:
            y = 3.0 if prev_right is None else abs(prev_right - i) / (prev_width - 1)
            score = A_FP * sigma(y)
        out.append(None if i < probation else (inside, score))
    return out, len(spans)


def score_alarms(weights, n_windows, alarms):
    best = [None] * n_windows
    fp = 0.0
    for i in alarms:
        w = weights[i]
        if w is None:
            continue
        k, s = w
        if k is None:
            fp += s
        else:
            best[k] = s if best[k] is None else max(best[k], s)
    return fp + sum(-A_FN if b is None else b for b in best)


def load():
    nab = os.path.join(DATA, "nab")
    with open(os.path.join(nab, "labels", "combined_windows.json")) as f:
        windows = json.load(f)
    with open(os.path.join(nab, "labels", "combined_labels.json")) as f:
        labels = json.load(f)
    files = []
    for group in ("realKnownCause", "realTraffic"):
        for name in sorted(os.listdir(os.path.join(nab, group))):
            key = f"{group}/{name}"
            with open(os.path.join(nab, key)) as f:
                rows = list(csv.reader(f))[1:]
            files.append((key, os.path.join(nab, key), rows, windows[key], labels[key]))
    return files


def edgeloop_json(path, features, args):
    out = subprocess.run(
        [BINARY, "anomaly", "--json", "--features", features, "--file", path] + args,
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def edgeloop(path, args):
    v = edgeloop_json(path, "value", args)
    return v["scores"], v["alarms"], v


def river(rows, q):
    scaler = preprocessing.MinMaxScaler()
    filt = anomaly.QuantileFilter(anomaly.HalfSpaceTrees(seed=42), q=q)
    scores, alarms = [], []
    for i, r in enumerate(rows):
        x = {"value": float(r[1])}
        s = filt.score_one(scaler.transform_one(x))
        if filt.classify(s):
            alarms.append(i)
        scaler.learn_one(x)
        filt.learn_one(scaler.transform_one(x))
        scores.append(s)
    return scores, alarms


OCCUPANCY_SETTINGS = {SETTINGS[0][0], SETTINGS[2][0], SETTINGS[5][0]} | {
    label for label, _, _ in SETTINGS if "level" in label or "margin" in label}
SHORT_ROWS, SHORT_ONSET = 1140, 570


def short_slices(prepared, tmp):
    """Per file: the path of its short run and the onset's row in it."""
    out = []
    for (_, rows, _, key, labs) in prepared:
        times = [r[0] for r in rows]
        onset = next(i for i, t in enumerate(times) if t >= labs[0][:19])
        start = max(0, onset - SHORT_ONSET)
        path = os.path.join(tmp, key.replace("/", "_"))
        with open(path, "w") as f:
            f.write("timestamp,value\n")
            f.writelines(f"{r[0]},{r[1]}\n" for r in rows[start:start + SHORT_ROWS])
        out.append((key, path, onset - start, min(len(rows), start + SHORT_ROWS) - start))
    return out


def short_runs(slices, args):
    """`edgeloop anomaly` on each short run: caught within 50 rows of the
    onset, alarms before, both."""
    caught = quiet = both = 0
    before_all, parts = [], []
    for key, path, onset, n in slices:
        v = edgeloop_json(path, "value", args)
        alarms = v["alarms"]
        hit = any(onset <= a < onset + 50 for a in alarms)
        before = [a for a in alarms if a < onset]
        first = next((a for a in alarms if a >= onset), None)
        caught += hit
        quiet += len(before) <= 1
        both += hit and len(before) <= 1
        before_all.append(len(before))
        rules = sorted({r for a, r in zip(alarms, v["rules"]) if onset <= a < onset + 50})
        parts.append(f"    {key} ({n} rows, onset {onset}): {'caught' if hit else 'missed'}"
                     f"{' by ' + '+'.join(rules) if rules else ''}, {len(before)} before"
                     f"{' ' + str(before[:6]) if before else ''}; first alarm from the onset: "
                     f"{'none' if first is None else f'row {first} (+{first - onset})'}")
    print("  short runs (1,140 rows, onset at 570):")
    print("\n".join(parts))
    print(f"  short runs: caught within 50 in {caught} of {len(slices)}; at most 1 alarm before "
          f"in {quiet} of {len(slices)}; caught with at most 1 before in {both} of {len(slices)} "
          f"(alarms before: {before_all})")


def occupancy(args):
    """Alarms and episodes of `edgeloop anomaly` on UCI Occupancy's files."""
    total_alarms = total_episodes = 0
    parts = []
    for name in ("datatest.txt", "datatraining.txt", "datatest2.txt"):
        v = edgeloop_json(os.path.join(DATA, "occupancy_uci", name),
                          "Temperature,Humidity,Light,CO2,HumidityRatio", args)
        total_alarms += len(v["alarms"])
        total_episodes += len(v["episodes"])
        by_rule = {r: v["rules"].count(r) for r in ("trees", "residual", "both", "level")}
        parts.append(f"{name} {len(v['alarms'])} alarms {by_rule} in {len(v['episodes'])} episodes")
    print(f"  UCI Occupancy (no labelled anomaly): {total_alarms} alarms in "
          f"{total_episodes} episodes ({'; '.join(parts)})")


def arrival_runs(tmp):
    """UCI Occupancy's arrivals as multivariate onsets: each first
    `Occupancy` = 1 after at least 8 hours of 0 (an empty night or
    weekend), with 570 readings before it and 570 from it (5 room sensors,
    one a minute, the files in time order). The label comes from
    time-stamped photos and lags the lights by a minute in half of them, so
    an alarm from 5 rows before the labelled arrival counts as caught."""
    rows = []
    for name in ("datatest.txt", "datatraining.txt", "datatest2.txt"):
        with open(os.path.join(DATA, "occupancy_uci", name)) as f:
            rows += list(csv.reader(f))[1:]
    occupied = [int(float(r[6])) for r in rows]
    out, empty_from = [], 0
    for i in range(1, len(rows)):
        if (occupied[i] == 1 and occupied[i - 1] == 0 and i - empty_from >= 480
                and SHORT_ONSET <= i <= len(rows) - SHORT_ONSET):
            path = os.path.join(tmp, f"arrival_{i}.csv")
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["Date", "Temperature", "Humidity", "Light", "CO2", "HumidityRatio"])
                w.writerows(r[:6] for r in rows[i - SHORT_ONSET:i + SHORT_ONSET])
            out.append((rows[i][0], path))
        if occupied[i] == 1:
            empty_from = i + 1
    return out


def arrivals(runs, args):
    """`edgeloop anomaly` on each arrival run: caught within 50 rows (from 5
    before the labelled arrival), alarms before that, both."""
    caught = both = 0
    before_all, parts = [], []
    for when, path in runs:
        v = edgeloop_json(path, "Temperature,Humidity,Light,CO2,HumidityRatio", args)
        rules = dict(zip(v["alarms"], v["rules"]))
        hit = [a for a in v["alarms"] if SHORT_ONSET - 5 <= a < SHORT_ONSET + 50]
        before = [a for a in v["alarms"] if a < SHORT_ONSET - 5]
        caught += bool(hit)
        both += bool(hit) and len(before) <= 1
        before_all.append(len(before))
        parts.append(f"{when[:16]} {'caught' if hit else 'missed'}"
                     f"{' by ' + rules[hit[0]] if hit else ''}, {len(before)} before"
                     f"{' ' + str([(a, rules[a]) for a in before[:4]]) if before else ''}")
    print("  UCI Occupancy arrivals (multivariate runs of 1,140 readings, arrival at 570): "
          + "; ".join(parts))
    print(f"  arrivals: caught in {caught} of {len(runs)}; caught with at most 1 alarm before in "
          f"{both} of {len(runs)} (alarms before: {before_all})")


MOTION_FEATURES = "accel_x,accel_y,accel_z,gyro_x,gyro_y,gyro_z"
MOTION_CLASSES = ("Standing", "Walking", "Running", "Badminton")


def motion_runs(tmp, recentred=False):
    """UEA BasicMotions (a smart watch's 3-axis accelerometer and gyroscope,
    10 readings a second, 100-reading series of 4 activities; train and test
    files together, 20 series per activity) as multivariate onsets: for each
    ordered pair of activities (12 runs), 570 readings of the first
    activity then 570 of the second, each the series of its activity in an
    order drawn with random.Random(18), joined end to end (the last one
    cut). The change of activity is the onset, at row 570; the joins inside
    an activity, every 100 readings, are not onsets (the same activity,
    another recording), as a real run's sensor restarts are not.

    Every join is a jump a worn watch does not make: each recording has its
    own mean per channel (the watch sits differently), so a join inside an
    activity moves the level as much as some changes of activity do. With
    `recentred`, each recording is shifted per channel to its activity's
    mean over all 40 recordings (the same draws), so that the recordings of
    one activity join at one level and the change of activity keeps the
    difference of the activities' means: a variant closer to one
    continuous run (the joins still cut the motion's phase, and a
    recording's own transients stay)."""
    import random
    series = {c: [] for c in MOTION_CLASSES}
    for name in ("BasicMotions_TRAIN.ts", "BasicMotions_TEST.ts"):
        with open(os.path.join(DATA, "basic_motions", name)) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith(("@", "#")):
                    continue
                *dims, label = line.split(":")
                series[label].append([[float(v) for v in d.split(",")] for d in dims])
    means = {c: [sum(sum(s[d]) / len(s[d]) for s in series[c]) / len(series[c])
                 for d in range(len(series[c][0]))] for c in series}

    def shifted(s, c):
        if not recentred:
            return s
        return [[v - sum(dim) / len(dim) + means[c][d] for v in dim] for d, dim in enumerate(s)]

    rng = random.Random(18)
    out = []
    for a in MOTION_CLASSES:
        for b in MOTION_CLASSES:
            if a == b:
                continue
            rows = []
            for c in (a, b):
                picked = rng.sample(series[c], 6)
                part = [list(r) for s in picked for r in zip(*shifted(s, c))]
                rows += part[:SHORT_ONSET]
            path = os.path.join(tmp, f"motions_{'recentred_' if recentred else ''}{a}_{b}.csv")
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(MOTION_FEATURES.split(","))
                w.writerows(rows)
            out.append((f"{a}->{b}", path))
    return out


def motions(runs, args, what="BasicMotions changes of activity", tag="motions"):
    """`edgeloop anomaly` on each BasicMotions run: caught within 50 rows of
    the change, alarms before it, both."""
    caught = both = 0
    before_all, parts = [], []
    for name, path in runs:
        v = edgeloop_json(path, MOTION_FEATURES, args)
        rules = dict(zip(v["alarms"], v["rules"]))
        hit = [a for a in v["alarms"] if SHORT_ONSET <= a < SHORT_ONSET + 50]
        before = [a for a in v["alarms"] if a < SHORT_ONSET]
        caught += bool(hit)
        both += bool(hit) and len(before) <= 1
        before_all.append(len(before))
        parts.append(f"{name} {'caught' if hit else 'missed'}"
                     f"{' by ' + rules[hit[0]] + f' at +{hit[0] - SHORT_ONSET}' if hit else ''}, "
                     f"{len(before)} before"
                     f"{' ' + str([(a, rules[a]) for a in before[:4]]) if before else ''}")
    print(f"  {what} (6 channels, 1,140 readings, change at 570): " + "; ".join(parts))
    print(f"  {tag}: caught in {caught} of {len(runs)}; caught with at most 1 alarm before in "
          f"{both} of {len(runs)} (alarms before: {before_all})")


AIR_FEATURES = "PT08_S1_CO,PT08_S2_NMHC,PT08_S3_NOx,PT08_S4_NO2,PT08_S5_O3,T,RH,AH"


def air_runs(tmp):
    """UCI Air Quality (De Vito et al., Sensors and Actuators B 2008;
    hourly readings in an Italian city, no labelled anomaly) as 8
    consecutive runs of 1,140 readings of its 5 metal-oxide sensors,
    temperature and humidities (-200, the file's missing value, as
    missing): short multivariate runs without an onset, for false alarms."""
    with open(os.path.join(DATA, "air_quality_uci", "AirQualityUCI.csv")) as f:
        rows = list(csv.DictReader(f))
    names = AIR_FEATURES.split(",")
    out = []
    for k in range(len(rows) // SHORT_ROWS):
        path = os.path.join(tmp, f"air_{k}.csv")
        with open(path, "w") as f:
            f.write(AIR_FEATURES + "\n")
            for r in rows[k * SHORT_ROWS:(k + 1) * SHORT_ROWS]:
                f.write(",".join("" if float(r[c]) == -200 else r[c] for c in names) + "\n")
        out.append(path)
    return out


def air(runs, args):
    """`edgeloop anomaly`'s alarms on each air-quality run."""
    counts = []
    for path in runs:
        v = edgeloop_json(path, AIR_FEATURES, args)
        counts.append((len(v["alarms"]), v["rules"].count("level")))
    print(f"  UCI Air Quality, {len(runs)} runs of 1,140 hourly readings of 8 sensors (no "
          f"labelled anomaly): {sum(a for a, _ in counts)} alarms "
          f"({sum(n for _, n in counts)} the level rule's); per run {[a for a, _ in counts]}")


def best_threshold(runs):
    """NAB's optimised threshold over every file's scores: the corpus raw
    score at each distinct score value (detections = rows at or above)."""
    values = sorted({round(s, 12) for _, scores, _ in runs for s in scores}, reverse=True)
    candidates = values[:: max(1, len(values) // 400)]
    best = (-math.inf, None)
    for t in candidates:
        raw = sum(score_alarms(w, n, [i for i, s in enumerate(scores) if s >= t])
                  for (w, n), scores, _ in runs)
        best = max(best, (raw, t))
    return best


def main():
    files = load()
    prepared = [(row_weights([r[0] for r in rows], wins), rows, path, key, labs)
                for key, path, rows, wins, labs in files]
    n_windows = sum(n for (w, n), *_ in prepared)
    null, perfect = -A_FN * n_windows, A_TP * n_windows
    norm = lambda raw: 100.0 * (raw - null) / (perfect - null)
    print(f"NAB standard profile (A_TP {A_TP}, A_FP {A_FP}, A_FN {A_FN}); "
          f"{len(files)} files, {n_windows} windows; data {DATA}")
    tmp = tempfile.mkdtemp(prefix="nab_short_")
    slices = short_slices(prepared, tmp)
    arrival = arrival_runs(tmp)
    motion = motion_runs(tmp)
    motion_recentred = motion_runs(tmp, recentred=True)
    air_quality = air_runs(tmp)
    for label, args, q in SETTINGS:
        e_runs, r_runs, lines = [], [], []
        e_raw = r_raw = 0.0
        onset_hit = {"edgeloop": 0, "river": 0}
        hits = {"edgeloop": [], "river": []}
        before = {"edgeloop": [], "river": []}
        for (wn, rows, path, key, labs) in prepared:
            es, ea, ev = edgeloop(path, args)
            rs, ra = river(rows, q)
            e_runs.append((wn, es, ea))
            r_runs.append((wn, rs, ra))
            e, r = score_alarms(*wn, ea), score_alarms(*wn, ra)
            e_raw += e
            r_raw += r
            times = [x[0] for x in rows]
            onset = next(i for i, t in enumerate(times) if t >= labs[0][:19])
            for who, al in (("edgeloop", ea), ("river", ra)):
                onset_hit[who] += any(onset <= a < onset + 50 for a in al)
                hits[who].append(any(onset <= a < onset + 50 for a in al))
                before[who].append(sum(1 for a in al if a < onset))
            lines.append(f"  {key}: edgeloop {e:+.3f} ({len(ea)} alarms), "
                         f"River {r:+.3f} ({len(ra)} alarms); onset row {onset}: edgeloop "
                         f"{'alarms' if any(onset <= a < onset + 50 for a in ea) else 'misses'} "
                         f"within 50, {before['edgeloop'][-1]} alarms before; within 50: "
                         f"score max {max(es[onset:onset + 50]):.4f}, residual z max "
                         f"{max(ev['residual_z'][onset:onset + 50]):.1f}; at the end: threshold "
                         f"{ev['threshold'] if ev['threshold'] is None else round(ev['threshold'], 4)}, "
                         f"residual limit {ev['residual_limit'] if ev['residual_limit'] is None else round(ev['residual_limit'], 1)}")
        print(f"\n## {label}")
        print("\n".join(lines))
        print(f"  NAB score by alarms: edgeloop {norm(e_raw):.1f}, River HST + QuantileFilter({q}) {norm(r_raw):.1f}")
        for who in ("edgeloop", "river"):
            b = before[who]
            print(f"  onset: {who} alarms within 50 rows of it in {onset_hit[who]} of {len(files)} runs; "
                  f"runs with at most 1 alarm before it: {sum(1 for x in b if x <= 1)} of {len(files)} "
                  f"(alarms before: {b})")
        both = sum(1 for h, b in zip(hits["edgeloop"], before["edgeloop"]) if h and b <= 1)
        print(f"  onset: edgeloop runs caught with at most 1 alarm before: {both} of {len(files)}")
        if label in OCCUPANCY_SETTINGS:
            occupancy(args)
            arrivals(arrival, args)
            motions(motion, args)
            motions(motion_recentred, args, "BasicMotions, recordings recentred on their "
                    "activity's mean", "motions recentred")
            air(air_quality, args)
        short_runs(slices, args)
        if args == []:
            (er, et), (rr, rt) = best_threshold(e_runs), best_threshold(r_runs)
            print(f"  NAB score at the corpus-best threshold: edgeloop {norm(er):.1f} (>= {et:.4f}), "
                  f"River HST {norm(rr):.1f} (>= {rt:.4f})")


if __name__ == "__main__":
    main()
