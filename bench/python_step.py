#!/usr/bin/env python3
"""The Python head's step against the C++ core's step, same build, same process, interleaved.

Shape B x D with M stored classes (default 256 x 512 x 2^16, float32). The memory is filled
through a checkpoint (the documented format; the only way to hold 2^16 classes without 2^16 / C
steps), then each repetition runs, in alternating order:
  core:   PrototypeMemory::step() on the tensors' memory, timed inside C++ (steady clock around
          the call: no Python, no pybind, no autograd)
  python: loss = head(embeddings, labels); loss.backward(), timed in Python around both (the
          nn.Module, the tensor checks, the binding, the autograd node, the commit)
on two heads holding the same memory and fed the same batches. Prints the medians and their ratio.

    /usr/bin/python3 bench/python_step.py [--batch 256 --dim 512 --memory 65536 --repetitions 15]
(with the package importable: pip install, or PYTHONPATH=python after an in-place build)
"""
import argparse
import json
import os
import statistics
import struct
import sys
import time
import zlib

import torch

import protomem


def filled_checkpoint(memory, dim, seed):
    """A version-1 checkpoint (docs/algorithm.md) of `memory` random unit prototypes, labels
    0 .. memory-1, default policies with CosFace(64, 0.35)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(memory, dim, generator=g), dim=1)
    head = bytearray(b"PROTOMEM")
    head += struct.pack("<IIQQqQQQQ", 1, 4, dim, memory, 0, memory, 0, memory, 0)
    for family, name, state in (("margin", "cosface", struct.pack("<dd", 64.0, 0.35)),
                                ("generator", "exemplar_mean", b""), ("refresh", "replace", b""),
                                ("queue", "least_recently_written", b""), ("mining", "none", b"")):
        head += struct.pack("<I", len(family)) + family.encode()
        head += struct.pack("<I", len(name)) + name.encode()
        head += struct.pack("<Q", len(state)) + state
    head += struct.pack("<Q", memory)
    record = torch.zeros(memory, 24 + 4 * dim, dtype=torch.uint8)
    ids = torch.arange(memory, dtype=torch.int64)
    record[:, 0:8] = ids[:, None].view(torch.uint8).view(memory, 8)
    record[:, 8:16] = ids[:, None].view(torch.uint8).view(memory, 8)
    record[:, 16:24] = (ids + 1)[:, None].view(torch.uint8).view(memory, 8)
    record[:, 24:] = rows.view(torch.uint8).view(memory, 4 * dim)
    body = bytes(head) + record.numpy().tobytes()
    body += struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--memory", type=int, default=65536)
    p.add_argument("--exemplars", type=int, default=4)
    p.add_argument("--repetitions", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: as is)")
    p.add_argument("--json", help="write the timings here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    state = filled_checkpoint(args.memory, args.dim, seed=1)
    make = lambda: protomem.PrototypeMemory(args.memory, args.dim,  # noqa: E731
                                            margin=protomem.CosFace(64.0, 0.35))
    core, python = make(), make()
    core.load_state_dict({"_extra_state": state})
    python.load_state_dict({"_extra_state": state})
    del state

    g = torch.Generator().manual_seed(2)
    C = args.batch // args.exemplars
    gradient = torch.empty(args.batch, args.dim)
    times = {"core": [], "python": []}
    losses = []
    for rep in range(args.warmup + args.repetitions):
        # half the classes stored (refreshed, stale copies excluded), half new (evicting)
        stored = torch.randperm(args.memory, generator=g)[:C // 2]
        fresh = args.memory + rep * C + torch.arange(C - C // 2)
        labels = torch.cat([stored, fresh]).repeat_interleave(args.exemplars)
        e = torch.randn(args.batch, args.dim, generator=g)
        order = ("core", "python") if rep % 2 == 0 else ("python", "core")
        for which in order:
            if which == "core":
                loss_core, _, seconds = core._core_step(e, labels, gradient)
            else:
                x = e.clone().requires_grad_(True)
                start = time.perf_counter()
                loss = python(x, labels)
                loss.backward()
                seconds = time.perf_counter() - start
                loss_py = loss.item()
            if rep >= args.warmup:
                times[which].append(seconds)
        assert loss_py == loss_core, (loss_py, loss_core)  # the same step, bit for bit
        losses.append(loss_py)

    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratio = median["python"] / median["core"]
    ratios = sorted(p / c for p, c in zip(times["python"], times["core"]))
    print(f"B={args.batch} D={args.dim} M={args.memory} float32, torch threads "
          f"{torch.get_num_threads()}, {args.repetitions} repetitions (+{args.warmup} warm-up), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"core step (C++ steady clock)      median {median['core']:9.3f} ms  "
          f"(min {min(times['core']) * 1e3:.1f}, max {max(times['core']) * 1e3:.1f})")
    print(f"python head forward + backward    median {median['python']:9.3f} ms  "
          f"(min {min(times['python']) * 1e3:.1f}, max {max(times['python']) * 1e3:.1f})")
    print(f"python / core: ratio of medians {ratio:.4f}; median of paired ratios "
          f"{statistics.median(ratios):.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "times_s": times, "median_ms": median,
                       "ratio_of_medians": ratio, "median_paired_ratio": statistics.median(ratios),
                       "loadavg": os.getloadavg(), "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
