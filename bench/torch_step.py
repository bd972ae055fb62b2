#!/usr/bin/python3
"""The same step in PyTorch (Debian's python3-torch), beside protomem's bench_step, shape by shape.

For each shape (B, D, M) this script runs bench_step for that shape (the protomem step and the
two-GEMM bound, paired per iteration), then times the PyTorch step on the same thread count, and
prints both with the ratios: protomem/bound from bench_step (paired per iteration), torch/bound
against the same two GEMMs timed through torch in the same loop (torch uses the same OpenBLAS
here), torch/protomem from the two medians. Interleaving shape by shape keeps the two measurements close in time
on a machine whose speed drifts.

Two PyTorch steps. "plain" is how one writes it first: the memory and batch logits concatenated
(B x (M + C)), the margin subtracted, F.cross_entropy. "torch" is tuned (no concatenation, logsumexp
pieces instead, an in-place scale and exclusion on the memory logits, no grad for the memory):
    x = normalize(e); p_c = normalize(sum of x of class c)
    mem = s * x @ W^T, stale copies of batch classes set to -inf     # B x M, materialised
    bat = s * x @ p^T, target column s * (cos - m)                    # B x C
    loss = mean(logaddexp(logsumexp(mem), logsumexp(bat)) - target); loss.backward()

Usage:
  /usr/bin/python3 bench/torch_step.py --bench build/bench/bench/bench_step [--threads 2]
      [--repetitions 3] [--shapes 256x512x65536,128x128x16384] [--json out.json]
  /usr/bin/python3 bench/torch_step.py --bench build/bench/bench/bench_step --profile 256x512x65536
Default shapes: the grid of bench_step (B in 128 256 512, D in 128 512, M in 2^14 .. 2^20).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

S, MARGIN, EXEMPLARS = 64.0, 0.35, 4


def torch_step(e, labels, W, excluded):
    """One step: returns (loss, dL/de)."""
    e = e.detach().requires_grad_(True)
    x = F.normalize(e, dim=1)
    classes, y = torch.unique(labels, return_inverse=True)
    u = torch.zeros(classes.numel(), x.shape[1], dtype=x.dtype).index_add(0, y, x)
    p = F.normalize(u, dim=1)
    mem = torch.mm(x, W.t())
    mem.mul_(S)
    if excluded.numel():
        mem.index_fill_(1, excluded, float("-inf"))
    bat = torch.mm(x, p.t()) * S
    target = bat.gather(1, y[:, None]).squeeze(1) - S * MARGIN
    bat = bat.scatter(1, y[:, None], target[:, None])
    lse = torch.logaddexp(torch.logsumexp(mem, 1), torch.logsumexp(bat, 1))
    loss = (lse - target).mean()
    loss.backward()
    return loss.detach(), e.grad


def torch_step_plain(e, labels, W, excluded):
    """The same step as one usually writes it first: the logits concatenated, F.cross_entropy."""
    e = e.detach().requires_grad_(True)
    x = F.normalize(e, dim=1)
    classes, y = torch.unique(labels, return_inverse=True)
    u = torch.zeros(classes.numel(), x.shape[1], dtype=x.dtype).index_add(0, y, x)
    p = F.normalize(u, dim=1)
    mem = x @ W.t()
    if excluded.numel():
        mem = mem.index_fill(1, excluded, float("-inf"))
    logits = torch.cat([mem, x @ p.t()], 1)
    target = W.shape[0] + y
    margin = torch.zeros_like(logits).scatter_(1, target[:, None], MARGIN)
    loss = F.cross_entropy(S * (logits - margin), target)
    loss.backward()
    return loss.detach(), e.grad


def time_torch(B, D, M, threads, repetitions):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    W = F.normalize(torch.rand(M, D, generator=g) * 2 - 1, dim=1)
    e = torch.rand(B, D, generator=g) * 2 - 1
    x = F.normalize(e, dim=1)
    times, plain, bounds = [], [], []
    next_label = M
    for r in range(repetitions + 1):  # the first is a warm-up
        labels = torch.arange(B) // EXEMPLARS + next_label  # new classes, as bench_step
        next_label += B // EXEMPLARS
        excluded = torch.empty(0, dtype=torch.long)
        t0 = time.perf_counter()
        torch_step(e, labels, W, excluded)
        t1 = time.perf_counter()
        torch_step_plain(e, labels, W, excluded)
        t2 = time.perf_counter()
        logits = torch.mm(x, W.t())  # the two-GEMM bound, through torch (same BLAS)
        torch.mm(logits, W)
        t3 = time.perf_counter()
        del logits
        if r > 0:
            times.append(t1 - t0)
            plain.append(t2 - t1)
            bounds.append(t3 - t2)
    del W
    return statistics.median(times), statistics.median(plain), statistics.median(bounds)


def profile(shape, threads, repetitions):
    """Where the tuned PyTorch step spends its time: its GEMMs (aten::mm, addmm) against the rest."""
    B, D, M = shape
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    W = F.normalize(torch.rand(M, D, generator=g) * 2 - 1, dim=1)
    e = torch.rand(B, D, generator=g) * 2 - 1
    excluded = torch.empty(0, dtype=torch.long)
    labels = torch.arange(B) // EXEMPLARS + M
    torch_step(e, labels, W, excluded)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repetitions):
            torch_step(e, labels, W, excluded)
    events = prof.key_averages()
    total = sum(ev.self_cpu_time_total for ev in events)
    gemm = sum(ev.self_cpu_time_total for ev in events if ev.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    print(f"torch {torch.__version__}, {threads} thread(s); tuned step at B={B} D={D} M={M}, "
          f"{repetitions} steps profiled")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"GEMMs (aten::mm/addmm/bmm): {gemm / 1e3 / repetitions:.1f} ms of "
          f"{total / 1e3 / repetitions:.1f} ms self CPU time per step ({gemm / total:.1%}); "
          f"the rest: {(total - gemm) / 1e3 / repetitions:.1f} ms. A step of protomem cannot take "
          f"less than the GEMMs, so torch/protomem <= total / GEMMs = {total / gemm:.2f} at this "
          f"shape unless protomem's GEMMs beat OpenBLAS's.")
    return 0


def run_bench(bench, B, D, M, threads, repetitions):
    name = f"BM_Step<protomem::cpu>/B:{B}/D:{D}/M:{M}/"
    cmd = [bench, f"--benchmark_filter=^{name.replace('<', '.').replace('>', '.')}",
           "--benchmark_format=json", f"--benchmark_repetitions={repetitions}",
           "--benchmark_report_aggregates_only=true"]
    env = dict(os.environ, PROTOMEM_BENCH_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out)
    for b in result["benchmarks"]:
        if b.get("aggregate_name") == "median" or (repetitions == 1 and b["run_type"] == "iteration"):
            step_ms = b["real_time"] if b["time_unit"] == "ms" else b["real_time"] / 1e6
            return step_ms / 1e3, b["bound_ms"] / 1e3, b["ratio"], result["context"]
    raise RuntimeError(f"no median for {name} in bench_step's output")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="path to bench_step")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--shapes", default="", help="comma-separated BxDxM (default: the grid)")
    parser.add_argument("--json", default="", help="write the table as JSON here")
    parser.add_argument("--profile", default="", metavar="BxDxM",
                        help="instead: profile the tuned PyTorch step at this shape (torch.profiler, "
                             "operators by self CPU time) and exit; --bench is then not run")
    args = parser.parse_args()
    if args.profile:
        return profile(tuple(int(v) for v in args.profile.split("x")), args.threads,
                       args.repetitions)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = [(B, D, M) for D in (128, 512) for M in (2**14, 2**16, 2**18, 2**20)
                  for B in (128, 256, 512)]

    print(f"torch {torch.__version__}, {args.threads} thread(s); medians of {args.repetitions}")
    header = (f"{'B':>4} {'D':>4} {'M':>8} | {'protomem ms':>11} {'bound ms':>9} {'torch ms':>9}"
              f" {'plain ms':>9} | {'protomem/bound':>14} {'torch/bound':>11} {'plain/bound':>11} |"
              f" {'torch/protomem':>14} {'plain/protomem':>14}")
    print(header)
    print("-" * len(header))
    rows = []
    for B, D, M in shapes:
        step, bound, ratio, context = run_bench(args.bench, B, D, M, args.threads, args.repetitions)
        t, tp, tb = time_torch(B, D, M, args.threads, args.repetitions)
        rows.append(dict(B=B, D=D, M=M, protomem_s=step, bound_s=bound, protomem_over_bound=ratio,
                         torch_s=t, torch_plain_s=tp, torch_bound_s=tb, torch_over_bound=t / tb,
                         plain_over_bound=tp / tb, torch_over_protomem=t / step,
                         plain_over_protomem=tp / step, load_average_1min=os.getloadavg()[0]))
        if args.json:  # after every shape, so that an interrupted run keeps what it measured
            write_json(args, rows)
        print(f"{B:>4} {D:>4} {M:>8} | {step * 1e3:>11.1f} {bound * 1e3:>9.1f} {t * 1e3:>9.1f}"
              f" {tp * 1e3:>9.1f} | {ratio:>14.3f} {t / tb:>11.2f} {tp / tb:>11.2f} |"
              f" {t / step:>14.2f} {tp / step:>14.2f}", flush=True)
    return 0


def write_json(args, rows):
    with open(args.json + ".tmp", "w") as f:
        json.dump(dict(threads=args.threads, torch=torch.__version__,
                       repetitions=args.repetitions, rows=rows), f, indent=1)
    os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    sys.exit(main())
