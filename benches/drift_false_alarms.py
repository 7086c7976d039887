"""False-alarm rates of `edgeloop drift` on the stationary stretches of the
shipped data, the measurement its defaults were chosen from (issue 18).

Stretches (no labelled anomaly, no known change):
- NAB (realKnownCause, realTraffic; Lavin & Ahmad 2015, numenta/NAB): every
  stretch between the labelled anomaly windows of `combined_windows.json`
  (rows inside a window dropped), and separately the stretches before each
  file's first window; `machine_temperature#2` (2013-12-16 to 2014-01-28,
  11,000 readings every 5 minutes) is the anomaly-free industrial run.
- UCI occupancy (Candanedo & Feldheim 2016), the three files in time order
  (datatest, datatraining, datatest2): weekdays only, weekends only, all.

- Seeded AR(1) streams (x[t] = phi x[t-1] + e[t], unit marginal variance):
  the test fixtures tests/fixtures/drift_windows/ar1_<phi>[_shift].csv
  (phi 0, 0.5, 0.9, 0.98; `_shift`: +1 sd from row 5,000, so the windows
  starting at row 5,000 or later are the real shifts), and five streams at
  phi 0.998 (numpy default_rng(SEED + k), 10,000 rows, the same +1 sd copy):
  the lag-1 autocorrelation of one-minute room temperature in UCI occupancy.
- The daemon's loop_e2e "another week" window (tests/loop_e2e.rs): the first
  1,000 rows of occupancy datatraining.txt as reference, the first 1,000 of
  datatest2.txt as the window (reference = window = 1,000): a real change
  (the model's training range left by half the window's temperature and
  humidity readings) that must be flagged.

For each setting it runs the binary's `drift --json` on each stretch long
enough for the reference and one window, and prints flagged / total windows
per stretch and overall. Settings: the defaults (reference 2,000, window
500, step 250, alpha 1e-4, PSI floor 1.2, shift floor 0.75, effective sizes
by the larger of the two autocorrelation times, no range rule); the
effective sizes from the lag-1 autocorrelation alone and from the initial
positive sequence alone; the range rule at 0.25 and 1.0; the previous
defaults (lag-1, range rule 0.25), the older ones (alpha 0.001, PSI floor
1.0, lag-1), the first ones (reference 500, step 500, alpha 0.01, floors
0.25 / 0.5, lag-1); and the seasonal references (`--timestamp`,
`--season`).

Run: python3 benches/drift_false_alarms.py [DATA_DIR] [BINARY]
(defaults ../shared/data and target/debug/edgeloop), from the repository
root; the output committed beside it is benches/drift_false_alarms.txt.
"""
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile

DATA = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
BINARY = sys.argv[2] if len(sys.argv) > 2 else "target/debug/edgeloop"

SEED = 20261206
LAG1 = ["--dependence", "lag1"]
SETTINGS = [
    ("defaults", []),
    ("lag-1 effective sizes", LAG1),
    ("initial positive sequence alone", ["--dependence", "initial_positive"]),
    ("range rule 0.25", ["--range-floor", "0.25"]),
    ("range rule 1.0", ["--range-floor", "1.0"]),
    ("previous defaults (lag-1, range rule 0.25)", LAG1 + ["--range-floor", "0.25"]),
    ("older defaults", ["--alpha", "0.001", "--psi-floor", "1.0"] + LAG1),
    ("first defaults", ["--reference", "500", "--step", "500", "--alpha", "0.01",
                        "--psi-floor", "0.25", "--shift-floor", "0.5"] + LAG1),
    ("seasonal hour_and_weekend", ["--timestamp", "timestamp"]),
    ("seasonal hour_of_day", ["--timestamp", "timestamp", "--season", "hour_of_day"]),
    ("seasonal hour_of_week", ["--timestamp", "timestamp", "--season", "hour_of_week"]),
]


def nab_stretches():
    nab = os.path.join(DATA, "nab")
    with open(os.path.join(nab, "labels", "combined_windows.json")) as f:
        windows = json.load(f)
    out = []
    for group in ("realKnownCause", "realTraffic"):
        for name in sorted(os.listdir(os.path.join(nab, group))):
            key = f"{group}/{name}"
            with open(os.path.join(nab, key)) as f:
                rows = list(csv.reader(f))[1:]
            spans = [(a[:19], b[:19]) for a, b in windows[key]]
            segs, seg = [], []
            for r in rows:
                if any(a <= r[0] <= b for a, b in spans):
                    if seg:
                        segs.append(seg)
                    seg = []
                else:
                    seg.append(r)
            if seg:
                segs.append(seg)
            for i, s in enumerate(segs):
                before_first = s[0] is rows[0]
                out.append((f"{name[:-4]}#{i}", before_first, ["timestamp", "value"], s))
    return out


def occupancy():
    d = os.path.join(DATA, "occupancy_uci")
    rows = []
    for name in ("datatest.txt", "datatraining.txt", "datatest2.txt"):
        with open(os.path.join(d, name)) as f:
            r = list(csv.reader(f))
        rows += r[1:]
    header = ["timestamp", "Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
    rows = [r[:6] for r in rows]
    day = lambda r: dt.datetime.strptime(r[0], "%Y-%m-%d %H:%M:%S").weekday()
    return [
        ("occupancy weekdays", header, [r for r in rows if day(r) < 5]),
        ("occupancy weekends", header, [r for r in rows if day(r) >= 5]),
        ("occupancy all", header, rows),
    ]


def ar1_streams():
    """(name, values, shifted): the fixtures' streams and five at phi 0.998."""
    import numpy as np
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                        "fixtures", "drift_windows")
    out = []
    for phi in ("0.0", "0.5", "0.9", "0.98"):
        for suffix in ("", "_shift"):
            with open(os.path.join(here, f"ar1_{phi}{suffix}.csv")) as f:
                values = [r[1] for r in list(csv.reader(f))[1:]]
            out.append((f"phi {phi}{suffix}", values, bool(suffix)))
    for k in range(5):
        rng = np.random.default_rng(SEED + k)
        phi, n = 0.998, 10_000
        e = rng.normal(0.0, np.sqrt(1.0 - phi * phi), n)
        x = np.empty(n)
        x[0] = rng.normal()
        for t in range(1, n):
            x[t] = phi * x[t - 1] + e[t]
        x = x.astype(np.float32)
        y = x.copy()
        y[n // 2:] += np.float32(1.0)
        out.append((f"phi 0.998 #{k}", [repr(float(v)) for v in x], False))
        out.append((f"phi 0.998 #{k}_shift", [repr(float(v)) for v in y], True))
    return out


def loop_e2e_window(tmp):
    d = os.path.join(DATA, "occupancy_uci")
    rows = []
    for name in ("datatraining.txt", "datatest2.txt"):
        with open(os.path.join(d, name)) as f:
            rows += [r[:6] for r in list(csv.reader(f))[1:1001]]
    path = os.path.join(tmp, "week.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "Temperature", "Humidity", "Light", "CO2", "HumidityRatio"])
        w.writerows(rows)
    return path


def drift(path, args, features, windows=False):
    out = subprocess.run(
        [BINARY, "drift", "--json", "--features", ",".join(features), "--file", path] + args,
        capture_output=True, text=True)
    if out.returncode != 0:
        return None
    v = json.loads(out.stdout)
    if windows:
        return v
    return v["flagged"], v["total"]


def main():
    tmp = tempfile.mkdtemp()
    nab = nab_stretches()
    occ = occupancy()
    ar = ar1_streams()
    week = loop_e2e_window(tmp)
    print(f"edgeloop drift false alarms; data {DATA}")
    for label, args in SETTINGS:
        ref = int(args[args.index("--reference") + 1]) if "--reference" in args else 2000
        totals = {"nab all": [0, 0], "nab before first anomaly": [0, 0]}
        print(f"\n## {label}: {' '.join(args) or '(no flags)'}")
        for name, first, header, rows in nab:
            if len(rows) < ref + 500:
                continue
            path = os.path.join(tmp, "s.csv")
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(rows)
            res = drift(path, args, ["value"])
            if res is None:
                continue
            print(f"  nab {name}: {res[0]}/{res[1]}")
            for k in ["nab all"] + (["nab before first anomaly"] if first else []):
                totals[k][0] += res[0]
                totals[k][1] += res[1]
        for k, (a, b) in totals.items():
            print(f"  {k}: {a}/{b} = {a / max(b, 1):.1%}")
        for name, header, rows in occ:
            path = os.path.join(tmp, "o.csv")
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(rows)
            res = drift(path, args, header[1:])
            if res:
                print(f"  {name}: {res[0]}/{res[1]} = {res[0] / max(res[1], 1):.1%}")
        if "--reference" in args or "--timestamp" in args:
            continue
        # AR(1): no change (every window) and +1 sd (windows from row 5,000
        # on flagged / windows ending before it flagged).
        for name, values, shifted in ar:
            path = os.path.join(tmp, "ar.csv")
            with open(path, "w") as f:
                f.write("t,x\n" + "".join(f"{t},{v}\n" for t, v in enumerate(values)))
            v = drift(path, args, ["x"], windows=True)
            flags = [(w["start"], w["drift"]) for w in v["windows"]]
            if shifted:
                after = [d for s, d in flags if s >= 5000]
                before = [d for s, d in flags if s + 500 <= 5000]
                print(f"  AR(1) {name}: shifted windows flagged {sum(after)}/{len(after)},"
                      f" before the shift {sum(before)}/{len(before)}")
            else:
                print(f"  AR(1) {name}: {v['flagged']}/{v['total']}")
        v = drift(week, args + ["--reference", "1000", "--window", "1000"],
                  ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"], windows=True)
        w = v["windows"][0]
        names = [k for k, f in w["features"].items() if f["drifted"]]
        print(f"  loop_e2e another week: drift {w['drift']} ({', '.join(names) or 'none'})")


if __name__ == "__main__":
    main()
