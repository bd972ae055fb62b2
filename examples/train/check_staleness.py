#!/usr/bin/env python3
"""Checks the two ages in a staleness.csv examples/train wrote against what the methods imply:
check_staleness.py FILE. A prototype is written only when its class is a positive (age ==
positive_age); full softmax writes every row every step (age == 0); Partial FC writes a row whenever
its class is a positive, and also as a sampled negative (positive_age >= age); no age exceeds the
step + 1 that marks 'never'. Under full softmax some row must have been last a positive before the
measured step (positive_age > 0 = age), or the new column would say nothing new there."""
import csv
import sys


def main(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        want = ["method", "step", "label", "age", "cosine", "positive_age"]
        if reader.fieldnames != want:
            sys.exit(f"{path}: columns {reader.fieldnames}, expected {want}")
        rows = list(reader)
    if not rows:
        sys.exit(f"{path}: no rows")
    older = {}
    for r in rows:
        m, step, age, pos = r["method"], int(r["step"]), int(r["age"]), int(r["positive_age"])
        bad = None
        if not (0 <= age <= step + 1 and 0 <= pos <= step + 1):
            bad = "an age outside [0, step + 1]"
        elif m.startswith("protomem") and age != pos:
            bad = "age != positive_age for a prototype"
        elif m.startswith("full") and age != 0:
            bad = "age != 0 under full softmax"
        elif m.startswith("pfc") and pos < age:
            bad = "positive_age < age under Partial FC"
        if bad:
            sys.exit(f"{path}: {bad}: {r}")
        if m.startswith("full"):
            older[m] = older.get(m, False) or pos > age
    for m, seen in older.items():
        if not seen:
            sys.exit(f"{path}: {m}: positive_age never exceeds age")
    print(f"{path}: {len(rows)} rows, methods {sorted(set(r['method'] for r in rows))}: ages consistent")


if __name__ == "__main__":
    main(sys.argv[1])
