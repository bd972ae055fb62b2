#!/usr/bin/env python3
"""Prints, from the staleness.csv files examples/train wrote, the mean cosine between a class's
classifier vector and its current mean embedding, binned by the vector's age (steps since it was
last written), at the last measurement of each run: staleness_table.py DIR...
A vector never written during the run has age steps + 1 (bin 'never')."""
import csv
import os
import sys

BINS = [(0, 0, "0"), (1, 10, "1-10"), (11, 50, "11-50"), (51, 100, "51-100"), (101, 10**12, ">100")]


def main(dirs):
    print("| run | method | step | " + " | ".join(f"age {b[2]}" for b in BINS) + " | never written | all |")
    print("|---|---|---:|" + "---:|" * (len(BINS) + 2))
    for d in dirs:
        with open(os.path.join(d, "staleness.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        run = os.path.basename(d.rstrip("/"))
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            last = max(int(r["step"]) for r in mine)
            mine = [r for r in mine if int(r["step"]) == last]
            cells = []
            never = [float(r["cosine"]) for r in mine if int(r["age"]) == last + 1]
            written = [r for r in mine if int(r["age"]) <= last]
            for lo, hi, _ in BINS:
                c = [float(r["cosine"]) for r in written if lo <= int(r["age"]) <= hi]
                cells.append(f"{sum(c) / len(c):.3f} ({len(c)})" if c else "-")
            cells.append(f"{sum(never) / len(never):.3f} ({len(never)})" if never else "-")
            allc = [float(r["cosine"]) for r in mine]
            cells.append(f"{sum(allc) / len(allc):.3f} ({len(allc)})")
            print(f"| `{run}` | {method} | {last} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
