#!/usr/bin/python3
"""Dataset-size independence: runs each benchmark of bench_scaling (method x number of identities N)
in its own process, so that its peak RSS is its own, over several rounds (the order of N reversed
every other round, so that a drift of the machine's speed does not line up with N), and prints the
median step time, the spread, the peak RSS and the state each method keeps, with each method's time
relative to its own at the smallest N.

Usage:
  /usr/bin/python3 bench/scaling.py --bench build/bench/bench/bench_scaling [--threads 2]
      [--rounds 5] [--methods Protomem,PartialFC,FullSoftmax] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

NS = [10**4, 10**5, 10**6, 10**7]


def run(bench, method, n, threads, min_time):
    cmd = [bench, f"--benchmark_filter=^BM_{method}/N:{n}$", "--benchmark_format=json",
           f"--benchmark_min_time={min_time}"]
    env = dict(os.environ, PROTOMEM_BENCH_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    b = json.loads(out)["benchmarks"][0]
    if b.get("error_occurred"):
        return dict(skipped=b.get("error_message", "skipped"))
    return dict(ms=b["real_time"], rss=b["peak_rss_mib"], state=b["state_mib"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per benchmark run")
    parser.add_argument("--methods", default="Protomem,PartialFC,FullSoftmax")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    methods = args.methods.split(",")

    results = {(m, n): [] for m in methods for n in NS}
    skipped = {}
    for r in range(args.rounds):
        order = NS if r % 2 == 0 else list(reversed(NS))
        for n in order:
            for m in methods:
                if (m, n) in skipped:
                    continue
                res = run(args.bench, m, n, args.threads, args.min_time)
                if "skipped" in res:
                    skipped[(m, n)] = res["skipped"]
                else:
                    results[(m, n)].append(res)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"B = 256 (64 classes x 4), D = 128, M = 8192; {args.threads} thread(s); "
          f"median of {args.rounds} processes")
    header = (f"{'method':<12} {'N':>9} | {'step ms':>8} {'min..max':>15} {'vs N=1e4':>8} |"
              f" {'peak RSS MiB':>12} {'state MiB':>9}")
    print(header)
    print("-" * len(header))
    table = []
    for m in methods:
        base = None
        for n in NS:
            if (m, n) in skipped:
                print(f"{m:<12} {n:>9} | not run: {skipped[(m, n)]}")
                table.append(dict(method=m, N=n, skipped=skipped[(m, n)]))
                continue
            runs = results[(m, n)]
            ms = statistics.median(x["ms"] for x in runs)
            rss = statistics.median(x["rss"] for x in runs)
            base = base or ms
            lo, hi = min(x["ms"] for x in runs), max(x["ms"] for x in runs)
            print(f"{m:<12} {n:>9} | {ms:>8.2f} {lo:>7.2f}..{hi:<7.2f} {ms / base:>8.3f} |"
                  f" {rss:>12.0f} {runs[0]['state']:>9.1f}")
            table.append(dict(method=m, N=n, ms=ms, min_ms=lo, max_ms=hi, relative=ms / base,
                              peak_rss_mib=rss, state_mib=runs[0]["state"],
                              runs_ms=[x["ms"] for x in runs], runs_rss_mib=[x["rss"] for x in runs]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, rounds=args.rounds, min_time=args.min_time,
                           load_average=os.getloadavg(), rows=table), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
