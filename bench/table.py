#!/usr/bin/python3
"""Prints a Google Benchmark JSON file (--benchmark_out=FILE --benchmark_out_format=json) as a
markdown table: one row per benchmark (the median aggregate when there are repetitions), its time
and the counters asked for.

Usage: bench/table.py FILE [--counters ratio,bound_ms,tile] [--time-unit ms]
"""
import argparse
import json
import sys

SCALE = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--counters", default="")
    args = parser.parse_args()
    counters = [c for c in args.counters.split(",") if c]
    with open(args.file) as f:
        data = json.load(f)
    context = data["context"]
    rows = data["benchmarks"]
    medians = [b for b in rows if b.get("aggregate_name") == "median"]
    if medians:
        rows = medians
        reps = max(b.get("repetitions", 1) for b in medians)
        what = f"median of {reps} repetitions"
    else:
        rows = [b for b in rows if b.get("run_type", "iteration") == "iteration"]
        what = "one run"
    print(f"<!-- {context.get('host_name', '')}: {context.get('num_cpus')} CPUs at "
          f"{context.get('mhz_per_cpu')} MHz, {context.get('date')}; {what} -->")
    print("| benchmark | time ms | " + " | ".join(counters) + " |")
    print("|---|---:|" + "---:|" * len(counters))
    for b in rows:
        if b.get("error_occurred"):
            print(f"| {b['run_name']} | {b.get('error_message', 'error')} |" + " |" * len(counters))
            continue
        ms = b["real_time"] * SCALE[b.get("time_unit", "ns")]
        values = []
        for c in counters:
            v = b.get(c)
            values.append("" if v is None else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"))
        print(f"| {b['run_name']} | {ms:.1f} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
