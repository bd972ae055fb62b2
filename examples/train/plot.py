#!/usr/bin/env python3
"""Draws the curves of examples/train from its CSV files: training loss, held-out TAR@FAR=1e-4 over
steps, and prototype staleness (cosine between a class's classifier vector and its current mean
embedding) against the vector's age. Usage: plot.py OUT_DIR  (writes OUT_DIR/curves.png)."""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(out):
    loss, curves, stale = rows(f"{out}/loss.csv"), rows(f"{out}/curves.csv"), rows(f"{out}/staleness.csv")
    methods = list(dict.fromkeys(r["method"] for r in curves))
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))

    for m in methods:
        xs = [int(r["step"]) for r in loss if r["method"] == m]
        ys = [float(r["loss"]) for r in loss if r["method"] == m]
        w = max(1, len(ys) // 50)  # running mean for readability
        smooth = [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]
        ax[0].plot(xs, smooth, label=m)
    ax[0].set(title="training loss (running mean)", xlabel="step", ylabel="loss")

    for m in methods:
        pts = [r for r in curves if r["method"] == m]
        ax[1].plot([int(r["step"]) for r in pts], [float(r["tar_1e4"]) for r in pts], marker="o", label=m)
    ax[1].set(title="held-out TAR @ FAR=1e-4", xlabel="step", ylabel="TAR", ylim=(0, 1))

    last_step = {m: max(int(r["step"]) for r in stale if r["method"] == m) for m in methods
                 if any(r["method"] == m for r in stale)}
    for m in last_step:
        by_age = defaultdict(list)
        for r in stale:
            if r["method"] == m and int(r["step"]) == last_step[m]:
                by_age[int(r["age"])].append(float(r["cosine"]))
        ages = sorted(by_age)
        # log-spaced bins of age, mean cosine per bin
        bins, edges, e = [], [0], 1
        while edges[-1] <= (ages[-1] if ages else 0):
            edges.append(e)
            e *= 2
        for lo, hi in zip(edges[:-1], edges[1:]):
            vals = [c for a in ages if lo <= a < hi for c in by_age[a]]
            if vals:
                bins.append(((lo + hi - 1) / 2, sum(vals) / len(vals)))
        ax[2].plot([b[0] + 1 for b in bins], [b[1] for b in bins], marker="o", label=m)
    ax[2].set(title="staleness at the end: cos(class vector, current class mean)",
              xlabel="age of the vector in steps + 1 (log)", ylabel="mean cosine", xscale="log")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}/curves.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])
