"""Shared helpers of the Python package's tests: batches, and an independent PyTorch reference of
the Prototype Memory step (normalise, mean prototypes, margin softmax) written from
docs/algorithm.md, not from the C++ code."""
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import protomem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def grouped_batch(classes, exemplars, dim, dtype=torch.float64, generator=None):
    """Embeddings (len(classes) * K x dim, requires grad) and labels, K rows per class in turn."""
    labels = torch.tensor([c for c in classes for _ in range(exemplars)], dtype=torch.int64)
    e = torch.randn(len(labels), dim, dtype=dtype, generator=generator)
    return e.requires_grad_(True), labels


def train_step(head, e, labels):
    """One trained step: loss, dL/dE; the update is committed by backward()."""
    e = e.detach().clone().requires_grad_(True)
    loss = head(e, labels)
    loss.backward()
    return loss.detach(), e.grad


def psi(margin, c):
    """The target function of a margin policy, on cosines c (autograd-friendly)."""
    if isinstance(margin, protomem.NoMargin):
        return c
    if isinstance(margin, protomem.CosFace):
        return c - margin.m
    if isinstance(margin, protomem.ArcFace):
        m = margin.m
        c = c.clamp(-1, 1)
        if margin.straight_through:
            # cos(theta + m) at every angle (no fallback) or the easy margin, and the gradient of
            # the plain cosine: the margin is an offset autograd does not see.
            with torch.no_grad():
                theta = torch.acos(c)
                shifted = torch.cos(theta + m)
                value = torch.where(c > 0, shifted, c) if margin.easy_margin else shifted
            return c + (value - c).detach()
        applies = c > 0 if margin.easy_margin else c > -math.cos(m)
        inside = c * math.cos(m) - torch.sqrt(1 - c * c) * math.sin(m)
        outside = c if margin.easy_margin else c - m * math.sin(m)
        return torch.where(applies, inside, outside)
    if isinstance(margin, protomem.CombinedMargin):
        m1, m2, m3 = margin.m1, margin.m2, margin.m3
        c = c.clamp(-1, 1)
        theta = torch.acos(c)
        t = (math.pi - m2) / m1
        return torch.where(theta <= t, torch.cos(m1 * theta + m2) - m3, c - m3 - (1 + math.cos(t)))
    raise TypeError(margin)


def aging_log_weights(aging, ages):
    """log pi(age) of each stored column under an aging policy (policies/aging.hpp): NoAging 0,
    MaxAge -inf past max_age, AgeDecay -age ln2 / half_life (and -inf past max_age)."""
    ages = torch.as_tensor(ages, dtype=torch.float64)
    if aging is None or isinstance(aging, protomem.NoAging):
        return torch.zeros_like(ages)
    bound = aging.max_age
    if isinstance(aging, protomem.AgeDecay):
        w = -math.log(2.0) * ages / aging.half_life
    else:
        w = torch.zeros_like(ages)
    if bound is not None:
        w = torch.where(ages > bound, torch.full_like(w, -math.inf), w)
    return w


def reference_step(e, labels, stored_labels, stored_prototypes, margin, generator,
                   stored_log_weights=None):
    """Loss and dL/dE of one step by autograd: every batch class's column is the normalised mean
    of its exemplars (detached for DetachedExemplarMean; for LeaveOneOut a sample's own target
    omits the sample), every stored class not in the batch a constant column, whose logit gets
    its aging log-weight (stored_log_weights; none: no aging) added; an expired one is no column."""
    e = e.detach().clone().requires_grad_(True)
    x = F.normalize(e, dim=1)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add(0, inverse, x)
    p = F.normalize(sums, dim=1)
    if isinstance(generator, protomem.DetachedExemplarMean):
        p = p.detach()
    keep = ~torch.isin(stored_labels, classes)
    if stored_log_weights is None:
        stored_log_weights = torch.zeros(len(stored_labels), dtype=torch.float64)
    keep &= torch.isfinite(stored_log_weights)
    W = stored_prototypes[keep].to(x.dtype)
    bias = stored_log_weights[keep].to(x.dtype)
    cos_batch = x @ p.t()
    if isinstance(generator, protomem.LeaveOneOut):
        q = F.normalize(sums[inverse] - x, dim=1)
        cos_target = (x * q).sum(1)
    else:
        cos_target = cos_batch.gather(1, inverse[:, None]).squeeze(1)
    s = margin.s
    target = s * psi(margin, cos_target)
    others = s * cos_batch
    onehot = F.one_hot(inverse, len(classes)).bool()
    batch_logits = torch.where(onehot, target[:, None], others)
    logits = torch.cat([s * (x @ W.t()) + bias, batch_logits], dim=1)
    targets = inverse + W.shape[0]
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    return loss.detach(), e.grad


def relative_error(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def checkpoint_bytes(labels, prototypes, dtype=torch.float32, steps=None, capacity=None,
                     margin=("cosface", (64.0, 0.35)), version=2):
    """A checkpoint written from the format in docs/algorithm.md (default policies), holding
    `labels` with `prototypes` (rows), in that eviction order; version 1 has no aging policy."""
    import struct
    import zlib
    n, dim = prototypes.shape
    steps = n if steps is None else steps
    capacity = n if capacity is None else capacity
    out = bytearray(b"PROTOMEM")
    scalar = 4 if dtype == torch.float32 else 8
    out += struct.pack("<IIQQqQQQQ", version, scalar, dim, capacity, 0, steps, 0, n, 0)

    def policy(family, name, state=b""):
        nonlocal out
        out += struct.pack("<I", len(family)) + family.encode()
        out += struct.pack("<I", len(name)) + name.encode()
        out += struct.pack("<Q", len(state)) + state

    policy("margin", margin[0], struct.pack("<" + "d" * len(margin[1]), *margin[1]))
    policy("generator", "exemplar_mean")
    policy("refresh", "replace")
    policy("queue", "least_recently_written")
    policy("mining", "none")
    if version >= 2:
        policy("aging", "none")
    out += struct.pack("<Q", n)
    fmt = "<" + ("f" if scalar == 4 else "d") * dim
    for r in range(n):
        out += struct.pack("<qQQ", int(labels[r]), r, min(r + 1, steps))
        out += struct.pack(fmt, *prototypes[r].tolist())
    out += struct.pack("<I", zlib.crc32(bytes(out)) & 0xFFFFFFFF)
    return torch.frombuffer(bytearray(out), dtype=torch.uint8).clone()


def run_ranks(world, command, cwd=None, timeout=300):
    """Runs `command(rank)` (an argv) for every rank of `world` as processes at once, with one
    OpenMP thread each; returns each one's (returncode, stdout, stderr). A process still running
    after `timeout` seconds is killed, so a collective left waiting fails the test, never hangs."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(command(r), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=cwd) for r in range(world)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


_stores = itertools.count()


def run_worker(tmp_path, source, world, *args, timeout=300):
    """Writes the worker script `source` into tmp_path and runs it on `world` ranks (argv: rank,
    world, a fresh FileStore path for torch.distributed, then `args`); asserts each exits 0 and
    prints "ok <rank>"."""
    path = tmp_path / "worker.py"
    path.write_text(source)
    store = str(tmp_path / f"store-{next(_stores)}")
    results = run_ranks(world, lambda r: [sys.executable, str(path), str(r), str(world), store,
                                          *args], cwd=str(tmp_path), timeout=timeout)
    everything = "".join(f"---- rank {r} (exit {code})\n{out}{err}"
                         for r, (code, out, err) in enumerate(results))
    for r, (code, out, err) in enumerate(results):
        assert code == 0 and f"ok {r}" in out, everything


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
