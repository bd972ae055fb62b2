#!/usr/bin/env python3
"""Prints the markdown table of docs/results.md from the results.csv files that examples/train wrote:
results_table.py DIR...  (each DIR is a --out of examples/train; the commands are in docs/results.md)."""
import csv
import os
import sys


def main(dirs):
    print("| identities | method | steps x batch | TAR@1e-3 | TAR@1e-4 | rank-1 | step ms | head state MB | peak RSS MB | proto cos | run |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for d in dirs:
        with open(os.path.join(d, "results.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        with open(os.path.join(d, "curves.csv"), newline="") as f:
            start = next(r for r in csv.DictReader(f) if int(r["step"]) == 0)
        run = os.path.basename(d.rstrip('/'))
        print(f"| {int(rows[0]['identities']):,} | untrained encoder | - | {float(start['tar_1e3']):.4f} | "
              f"{float(start['tar_1e4']):.4f} | {float(start['rank1']):.4f} | - | - | - | - | `{run}` |")
        for r in rows:
            images = int(r["images"])
            steps = int(r["steps"])
            print(f"| {int(r['identities']):,} | {r['method']} | {steps} x {images // steps} | "
                  f"{float(r['tar_1e3']):.4f} | {float(r['tar_1e4']):.4f} | {float(r['rank1']):.4f} | "
                  f"{float(r['step_ms']):.1f} | {float(r['state_mb']):.1f} | {float(r['peak_rss_mb']):.0f} | "
                  f"{float(r['staleness_cos']):.3f} | `{os.path.basename(d.rstrip('/'))}` |")


if __name__ == "__main__":
    main(sys.argv[1:])
