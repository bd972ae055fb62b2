#!/usr/bin/python3
"""Prints a markdown table of 3-seed means from examples/train run directories named <run>-s<seed>:
seed_table.py [--plot FILE] [--curves FILE] DIR...

Rows: (run, method), over the seeds found; each metric as mean +- sample standard deviation and the
seeds' range [min, max]. With --plot, draws TAR@1e-4 against memory size for runs named
m<M>-<policy>-s<seed> (the staleness sweep of docs/results.md), one line per policy, error bars the
standard deviation, plus horizontal bands for the full-instance and pfc-instance rows of any other
run given (full softmax and Partial FC on uniform batches). With --curves,
draws each (run, method)'s held-out TAR@1e-4 over the training steps (curves.csv), mean over seeds."""
import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict

BANDS = ("full-instance", "pfc-instance")  # drawn as horizontal bands by --plot
METRICS = [("tar_1e3", "TAR@1e-3"), ("tar_1e4", "TAR@1e-4"), ("rank1", "rank-1")]


def runs(dirs):
    """{(run, method): {metric: [values by seed]}}, and the seeds per key."""
    table = defaultdict(lambda: defaultdict(list))
    seeds = defaultdict(list)
    for d in dirs:
        name = os.path.basename(d.rstrip("/"))
        m = re.fullmatch(r"(.*)-s(\d+)", name)
        if not m:
            sys.exit(f"seed_table.py: '{name}' is not <run>-s<seed>")
        path = os.path.join(d, "results.csv")
        if not os.path.exists(path):
            print(f"(skipped {name}: no results.csv)", file=sys.stderr)
            continue
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                key = (m.group(1), r["method"])
                seeds[key].append(int(m.group(2)))
                for metric, _ in METRICS:
                    table[key][metric].append(float(r[metric]))
                table[key]["step_ms"].append(float(r["step_ms"]))
    return table, seeds


def stats(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, min(values), max(values)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot")
    ap.add_argument("--curves")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    table, seeds = runs(a.dirs)
    print("| run | method | seeds | " + " | ".join(f"{t} mean ± sd [min, max]" for _, t in METRICS)
          + " | step ms |")
    print("|---|---|---|" + "---:|" * len(METRICS) + "---:|")
    for key in table:
        cells = []
        for metric, _ in METRICS:
            mean, sd, lo, hi = stats(table[key][metric])
            cells.append(f"{mean:.4f} ± {sd:.4f} [{lo:.4f}, {hi:.4f}]")
        step = stats(table[key]["step_ms"])[0]
        print(f"| `{key[0]}` | {key[1]} | {','.join(map(str, sorted(seeds[key])))} | "
              + " | ".join(cells) + f" | {step:.0f} |")
    if a.plot:
        plot(table, a.plot)
    if a.curves:
        curves(a.dirs, a.curves)


def curves(dirs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = defaultdict(lambda: defaultdict(list))  # (run, method) -> step -> values
    for d in dirs:
        run = re.fullmatch(r"(.*)-s(\d+)", os.path.basename(d.rstrip("/"))).group(1)
        path_csv = os.path.join(d, "curves.csv")
        if not os.path.exists(os.path.join(d, "results.csv")):
            continue
        with open(path_csv, newline="") as f:
            for r in csv.DictReader(f):
                series[(run, r["method"])][int(r["step"])].append(float(r["tar_1e4"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (run, method), points in sorted(series.items()):
        steps = sorted(points)
        ax.plot(steps, [sum(points[s]) / len(points[s]) for s in steps], marker=".",
                label=f"{method} ({run})")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out TAR@1e-4 (mean over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = defaultdict(list)
    bands = []
    for (run, method), values in table.items():
        m = re.fullmatch(r"m(\d+)-(.*)", run)
        mean, sd, _, _ = stats(values["tar_1e4"])
        if m:
            lines[m.group(2)].append((int(m.group(1)), mean, sd))
        elif method in BANDS:
            bands.append((method, mean, sd))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for policy, points in sorted(lines.items()):
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=3, label=f"protomem, {policy}")
    for label, mean, sd in bands:
        ax.axhline(mean, linestyle="--", linewidth=1, label=label, color="gray" if "pfc" in label else "black")
        ax.axhspan(mean - sd, mean + sd, alpha=0.1, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory slots M")
    ax.set_ylabel("held-out TAR@1e-4 (3-seed mean ± sd)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
