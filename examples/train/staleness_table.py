#!/usr/bin/env python3
"""Prints, from the staleness.csv files examples/train wrote, the mean cosine between a class's
classifier vector and its current mean embedding, binned by age, at one measurement of each run
(the last, or --step): staleness_table.py [--age written|positive] [--step N,...] [--bins U,...] DIR...

--age written (default): steps since the vector was last written (column `age`; for Partial FC,
  since the row was last sampled, as a positive or as a negative). A vector never written during
  the run has age steps + 1 (bin 'never written').
--age positive: steps since the vector's class was last a positive, in a step's batch (column
  `positive_age`; for protomem the same as `age`, a prototype is written only then). A class never
  in a batch during the run has age steps + 1 (bin 'never positive').
--step N,...: the measurements at these steps (multiples of the run's --eval-every), one row each,
  instead of the last.
--bins U,...: the age bins' inclusive upper bounds, increasing; a last bin takes the ages above the
  last bound (default 0,10,50,100: bins 0, 1-10, 11-50, 51-100, >100)."""
import argparse
import csv
import os
import sys



def make_bins(text):
    try:
        uppers = [int(u) for u in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bins '{text}': not a list of integers")
    if uppers[0] < 0 or any(b <= a for a, b in zip(uppers, uppers[1:])):
        raise argparse.ArgumentTypeError(f"--bins '{text}': bounds must be >= 0 and increasing")
    bins, lo = [], 0
    for hi in uppers:
        bins.append((lo, hi, str(lo) if lo == hi else f"{lo}-{hi}"))
        lo = hi + 1
    return bins + [(lo, 10**12, f">{uppers[-1]}")]


def make_steps(text):
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--step '{text}': not a list of integers")

COLUMNS = {"written": ("age", "never written"), "positive": ("positive_age", "never positive")}


def print_row(run, method, last, mine, column, bins):
    """One table row: the measurement of `method` at step `last`."""
    cells = []
    never = [float(r["cosine"]) for r in mine if int(r[column]) == last + 1]
    seen = [r for r in mine if int(r[column]) <= last]
    for lo, hi, _ in bins:
        c = [float(r["cosine"]) for r in seen if lo <= int(r[column]) <= hi]
        cells.append(f"{sum(c) / len(c):.3f} ({len(c)})" if c else "-")
    cells.append(f"{sum(never) / len(never):.3f} ({len(never)})" if never else "-")
    allc = [float(r["cosine"]) for r in mine]
    cells.append(f"{sum(allc) / len(allc):.3f} ({len(allc)})")
    print(f"| `{run}` | {method} | {last} | " + " | ".join(cells) + " |")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--age", choices=sorted(COLUMNS), default="written",
                   help="which age to bin by (default: written)")
    p.add_argument("--step", type=make_steps, default=None,
                   help="measurement steps, comma-separated (default: the last of each run)")
    p.add_argument("--bins", type=make_bins, default=make_bins("0,10,50,100"),
                   help="age bins' upper bounds, comma-separated (default: 0,10,50,100)")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    args = p.parse_args(argv)
    column, never_name = COLUMNS[args.age]
    bins = args.bins
    runs = []
    for d in args.dirs:
        path = os.path.join(d, "staleness.csv")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                sys.exit(f"staleness_table.py: {path} has no column '{column}' (--age {args.age}); "
                         "it was written by an older examples/train, rerun it")
            rows = list(reader)
        run = os.path.basename(d.rstrip("/"))
        for method in dict.fromkeys(r["method"] for r in rows):
            steps = sorted({int(r["step"]) for r in rows if r["method"] == method})
            for step in args.step or []:
                if step not in steps:
                    sys.exit(f"staleness_table.py: {run}/{method} has no measurement at step "
                             f"{step} (steps {steps})")
        runs.append((run, rows))
    print("| run | method | step | " + " | ".join(f"age {b[2]}" for b in bins) +
          f" | {never_name} | all |")
    print("|---|---|---:|" + "---:|" * (len(bins) + 2))
    for run, rows in runs:
        for method in dict.fromkeys(r["method"] for r in rows):
            of_method = [r for r in rows if r["method"] == method]
            for last in args.step or [max(int(r["step"]) for r in of_method)]:
                print_row(run, method, last, [r for r in of_method if int(r["step"]) == last],
                          column, bins)


if __name__ == "__main__":
    main(sys.argv[1:])
