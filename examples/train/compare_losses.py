"""Compares two runs' loss.csv (method,step,loss) step by step: examples/train in one process
against the same command with --distributed on several ranks, which must give the same losses to
float rounding: the ranks sum the memory pass, the batch-norm statistics and the gradients in
another order. The difference grows through the steps (training amplifies it, and once a ReLU input
within it of 0 flips sign, by a jump), so the first steps are held to a tight bound, all of them
to a loose one.

usage: compare_losses.py SINGLE/loss.csv DISTRIBUTED/loss.csv [--early N] [--early-tol X] [--tol X]
Exit status 0 when both files hold the same methods and steps, the relative difference of every one
of the first N steps is <= early-tol and of every step <= tol; prints the largest differences.
"""
import argparse
import csv
import sys


def read(path):
    with open(path, newline="") as f:
        return {(row["method"], int(row["step"])): float(row["loss"]) for row in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("single")
    parser.add_argument("distributed")
    parser.add_argument("--early", type=int, default=5, help="steps held to --early-tol")
    parser.add_argument("--early-tol", type=float, default=1e-4)
    parser.add_argument("--tol", type=float, default=5e-2)
    args = parser.parse_args()
    a, b = read(args.single), read(args.distributed)
    if not a or a.keys() != b.keys():
        print(f"the runs differ in methods or steps: {len(a)} and {len(b)} (method, step) rows")
        return 1
    ok = True
    for method in sorted({m for m, _ in a}):
        steps = sorted(s for m, s in a if m == method)
        rel = {s: abs(a[method, s] - b[method, s]) / max(abs(a[method, s]), 1e-12) for s in steps}
        early = max(rel[s] for s in steps if s <= args.early)
        worst = max(steps, key=lambda s: rel[s])
        print(f"{method}: {len(steps)} steps; largest relative loss difference {early:.2e} over "
              f"steps 1-{args.early}, {rel[worst]:.2e} over all (step {worst}: "
              f"{a[method, worst]} vs {b[method, worst]})")
        ok = ok and early <= args.early_tol and rel[worst] <= args.tol
    if not ok:
        print(f"FAILED: above {args.early_tol} over the first {args.early} steps or {args.tol} "
              "over all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
