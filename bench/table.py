#!/usr/bin/python3
"""Prints a benchmark result file of bench/results/ as a markdown table, or regenerates the tables
of a document from their files.

Three kinds of file, told apart by their contents:
  - Google Benchmark JSON (--benchmark_out=FILE --benchmark_out_format=json): one row per benchmark
    (the median aggregate when there are repetitions), its time and the counters asked for
    (--counters ratio,bound_ms,tile); --filter REGEX keeps the rows whose name matches.
  - bench/torch_step.py --json: protomem, the two-GEMM bound and the PyTorch steps, shape by shape.
  - bench/scaling.py --json: step time and peak RSS against the number of identities.
  - any other (text) file: quoted as it is, or only its lines matching --lines REGEX.
Above the table, a line in italics says where and when it ran: CPUs, date, load average.

Usage:
  bench/table.py FILE [--counters ratio,bound_ms] [--filter REGEX]
  bench/table.py --update docs/performance.md
--update rewrites, in place, every block of the document of the form
    <!-- table: bench/table.py FILE [options] -->
    ...
    <!-- end table -->
with this script's output for those arguments (so a table in the docs is always reproducible from
the command written in it).
"""
import argparse
import json
import re
import shlex
import statistics
import sys

SCALE = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def fmt(v):
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if v == int(v) and abs(v) < 1e7:
        return f"{int(v)}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def gbench_table(data, counters, pattern):
    context = data["context"]
    rows = data["benchmarks"]
    medians = [b for b in rows if b.get("aggregate_name") == "median"]
    if medians:
        rows = medians
        reps = max(b.get("repetitions", 1) for b in medians)
        what = f"median of {reps} repetitions"
    else:
        rows = [b for b in rows if b.get("run_type", "iteration") == "iteration"]
        what = "one run each"
    if pattern:
        rows = [b for b in rows if re.search(pattern, b["run_name"])]
    load = context.get("load_avg")
    load = ", ".join(f"{v:.1f}" for v in load) if load else "?"
    out = [f"*{context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
           f"{context.get('date')}, load average {load} (1, 5, 15 min) at the start; {what}.*", ""]
    out.append("| benchmark | time ms | " + " | ".join(counters) + " |")
    out.append("|---|---:|" + "---:|" * len(counters))
    for b in rows:
        if b.get("error_occurred"):
            out.append(f"| {b['run_name']} | {b.get('error_message', 'error')} |" + " |" * len(counters))
            continue
        ms = b["real_time"] * SCALE[b.get("time_unit", "ns")]
        values = [fmt(b.get(c)) for c in counters]
        out.append(f"| `{b['run_name']}` | {ms:.1f} | " + " | ".join(values) + " |")
    return out


def torch_table(data):
    rows = data["rows"]
    loads = [r["load_average_1min"] for r in rows if "load_average_1min" in r]
    load = (f"1-minute load average {min(loads):.1f} to {max(loads):.1f} over the run"
            if loads else "load average not recorded")
    out = [f"*PyTorch {data['torch']}, {data['threads']} threads; medians of "
           f"{data.get('repetitions', 3)}; {load}.*", ""]
    out.append("| B | D | M | protomem ms | bound ms | protomem/bound | torch ms | torch/bound "
               "| torch/protomem | via bounds | plain ms | plain/protomem | torch >= 2x protomem |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        via = r["torch_over_bound"] / r["protomem_over_bound"]
        verdict = "yes" if r["torch_over_protomem"] >= 2 else "**no**"
        out.append(f"| {r['B']} | {r['D']} | {r['M']} | {1e3 * r['protomem_s']:.1f} | "
                   f"{1e3 * r['bound_s']:.1f} | {r['protomem_over_bound']:.3f} | "
                   f"{1e3 * r['torch_s']:.1f} | {r['torch_over_bound']:.2f} | "
                   f"{r['torch_over_protomem']:.2f} | {via:.2f} | "
                   f"{1e3 * r['torch_plain_s']:.1f} | {r['plain_over_protomem']:.2f} | {verdict} |")
    ratios = [r["torch_over_protomem"] for r in rows]
    vias = [r["torch_over_bound"] / r["protomem_over_bound"] for r in rows]
    bounds = [r["protomem_over_bound"] for r in rows]
    missed = [f"{r['B']}x{r['D']}x{r['M']}" for r in rows if r["torch_over_protomem"] < 2]
    out += ["", f"{len(rows)} shapes. torch/protomem from {min(ratios):.2f} to {max(ratios):.2f} "
            f"(median {statistics.median(ratios):.2f}), >= 2 at {len(rows) - len(missed)} of "
            f"{len(rows)}" + (f" (below 2 at B x D x M = {', '.join(missed)})" if missed else "") +
            f"; via bounds from {min(vias):.2f} to {max(vias):.2f}, >= 2 at "
            f"{sum(v >= 2 for v in vias)} of {len(rows)}. protomem/bound from {min(bounds):.3f} to "
            f"{max(bounds):.3f} (median {statistics.median(bounds):.3f})."]
    return out


def scaling_table(data):
    out = [f"*{data['threads']} threads; each benchmark in its own process, {data['rounds']} "
           "rounds; medians over the rounds.*", ""]
    out.append("| method | N | step ms | spread (IQR) ms | min..max ms | vs N = 10^4 | "
               "peak RSS MiB | state MiB |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["rows"]:
        if "skipped" in r:
            out.append(f"| {r['method']} | {r['N']:.0e} | not run: {r['skipped']} | | | | | |")
            continue
        runs = r.get("runs_ms")
        iqr = ""
        if runs and len(runs) >= 4:
            q = statistics.quantiles(runs, n=4)
            iqr = f"{q[0]:.2f}..{q[2]:.2f}"
        out.append(f"| {r['method']} | {r['N']:.0e} | {r['ms']:.2f} | {iqr} | "
                   f"{r['min_ms']:.2f}..{r['max_ms']:.2f} | {r['relative']:.3f} | "
                   f"{r['peak_rss_mib']:.0f} | {r['state_mib']:.1f} |")
    notes = []
    for method in dict.fromkeys(r["method"] for r in data["rows"]):
        runs = {r["N"]: r for r in data["rows"] if r["method"] == method and "skipped" not in r}
        lo, hi = min(runs), max(runs)
        if lo == hi:
            continue
        note = (f"{method}: median step time at N = {hi:.0e} is {runs[hi]['ms'] / runs[lo]['ms']:.3f}x "
                f"that at N = {lo:.0e}")
        if runs[lo].get("runs_ms") and runs[hi].get("runs_ms"):
            # The spread of the ratio: its value for each round (the two runs of a round are
            # minutes apart at most).
            per_round = [b / a for a, b in zip(runs[lo]["runs_ms"], runs[hi]["runs_ms"])]
            note += (f" (per round {min(per_round):.3f} to {max(per_round):.3f}, median "
                     f"{statistics.median(per_round):.3f})")
        notes.append(note)
    if notes:
        out += ["", "; ".join(notes) + "."]
    return out


def table(argv):
    parser = argparse.ArgumentParser(prog="bench/table.py")
    parser.add_argument("file")
    parser.add_argument("--counters", default="")
    parser.add_argument("--filter", default="", help="keep the rows whose name matches (regex)")
    parser.add_argument("--lines", default="", help="text files: keep the lines matching (regex)")
    args = parser.parse_args(argv)
    if not args.file.endswith(".json"):  # a text output (e.g. a profile): quoted as it is
        with open(args.file) as f:
            lines = [l.rstrip("\n") for l in f if not args.lines or re.search(args.lines, l)]
        return ["```"] + lines + ["```"]
    with open(args.file) as f:
        data = json.load(f)
    if "benchmarks" in data:
        return gbench_table(data, [c for c in args.counters.split(",") if c], args.filter)
    if "torch" in data:
        return torch_table(data)
    if data.get("rows") and "method" in data["rows"][0]:
        return scaling_table(data)
    raise SystemExit(f"{args.file}: not a file this script knows")


BLOCK = re.compile(r"(<!-- table: bench/table\.py (.*?) -->\n)(.*?)(<!-- end table -->)", re.S)


def update(path):
    with open(path) as f:
        text = f.read()
    count = 0

    def replace(m):
        nonlocal count
        count += 1
        argv = shlex.split(m.group(2))
        try:
            lines = table(argv)
        except FileNotFoundError:
            lines = [f"*Not measured: {argv[0]} does not exist.*"]
        except json.JSONDecodeError:
            lines = [f"*Not measured: {argv[0]} is incomplete (its run had not finished).*"]
        return m.group(1) + "\n".join(lines) + "\n" + m.group(4)

    text = BLOCK.sub(replace, text)
    with open(path, "w") as f:
        f.write(text)
    print(f"{path}: {count} table(s) regenerated", file=sys.stderr)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(sys.argv[2])
        return 0
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    print("\n".join(table(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
