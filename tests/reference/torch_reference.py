#!/usr/bin/python3
"""Independent reference check of PrototypeMemory's loss and dL/dE against PyTorch autograd.

Usage: torch_reference.py PATH/TO/dump_cases

Runs the dump binary (tests/reference/dump_cases.cpp), which prints random steps of
PrototypeMemory<double> as JSON: the raw embeddings E, the labels, the memory's stored records before
the step, and the C++ loss and gradient. For each case this script recomputes the step's loss from
scratch in torch float64, straight from the formulas of docs/algorithm.md ("One step", "The
gradient") and the policy headers' documented rules, and lets autograd produce dL/dE. Nothing here
ports the C++ backward pass.

Exit status: 0 all cases agree (relative error <= 1e-9 for the loss and for the gradient),
1 a disagreement (or the dump failed), 77 torch is not available (CTest's skip code).
"""
import json
import math
import subprocess
import sys
from collections import defaultdict

TOLERANCE = 1e-9
FLOOR = 1e-12

try:
    import torch
except Exception as error:  # ImportError, or a broken install failing on import
    print(f"SKIP: cannot import torch with {sys.executable}: {error!r}")
    sys.exit(77)


def psi(margin, c):
    """The target function psi(cos) of a margin, on a 0-d float64 tensor; returns (value, branch)."""
    name = margin["name"]
    c = torch.clamp(c, -1.0, 1.0)
    v = c.item()
    if name == "none":
        return c, "plain"
    if name == "cosface":
        return c - margin["m"], "plain"
    if name == "arcface":
        m = margin["m"]
        if margin["easy_margin"]:
            if v > 0.0:
                return torch.cos(torch.acos(c) + m), "angular"
            return c, "fallback"
        if v > math.cos(math.pi - m):
            return torch.cos(torch.acos(c) + m), "angular"
        return c - m * math.sin(m), "fallback"
    if name == "combined":
        m1, m2, m3 = margin["m1"], margin["m2"], margin["m3"]
        theta_t = (math.pi - m2) / m1
        theta = torch.acos(c)
        if theta.item() <= theta_t:
            return torch.cos(m1 * theta + m2) - m3, "angular"
        return c - m3 - (1.0 + math.cos(theta_t)), "fallback"
    raise ValueError(f"unknown margin {name!r}")


def log_weight(aging, age):
    """log pi(age) of a stored column (policies/aging.hpp); -inf: expired."""
    name = aging["name"]
    if name == "none":
        return 0.0
    bound = aging["max_age"]
    if bound >= 0 and age > bound:
        return -math.inf
    if name == "max_age":
        return 0.0
    if name == "age_decay":
        return -math.log(2.0) * age / aging["half_life"]
    raise ValueError(f"unknown aging {name!r}")


def reference(case):
    """Loss and dL/dE of one case, from scratch; also the margin branch taken per sample."""
    margin = case["margin"]
    generator = case["generator"]
    s = margin["s"]
    labels = case["labels"]
    B = len(labels)

    E = torch.tensor(case["E"], dtype=torch.float64, requires_grad=True)
    x = E / torch.linalg.norm(E, dim=1, keepdim=True)

    classes = sorted(set(labels))
    members = {c: [i for i in range(B) if labels[i] == c] for c in classes}
    sums = {c: x[members[c]].sum(dim=0) for c in classes}
    prototypes = []
    for c in classes:
        p = sums[c] / torch.linalg.norm(sums[c])
        if generator == "detached_exemplar_mean":
            p = p.detach()
        prototypes.append(p)

    # Columns: the stored prototypes of classes not in this batch (constants) that have not
    # expired, each with its log-weight by age (policies/aging.hpp), then one fresh column per
    # batch class (weight 1).
    stored, log_weights = [], []
    for label, p, written in zip(case["stored_labels"], case["stored_prototypes"],
                                 case["stored_last_written"]):
        w = log_weight(case.get("aging", {"name": "none"}), case.get("steps_before", 0) - written)
        if label not in members and w != -math.inf:
            stored.append(torch.tensor(p, dtype=torch.float64))
            log_weights.append(w)
    columns = torch.stack(stored + prototypes)  # (M_other + C) x D
    n_stored = len(stored)
    bias = torch.tensor(log_weights + [0.0] * len(prototypes), dtype=torch.float64)
    cos = x @ columns.T  # B x (M_other + C)

    # Target cosine of each sample.
    target_index = [n_stored + classes.index(labels[i]) for i in range(B)]
    target_cos = []
    for i in range(B):
        c = labels[i]
        if generator == "leave_one_out":
            rest = sums[c] - x[i]
            q = rest / torch.linalg.norm(rest)
            target_cos.append(torch.dot(x[i], q))
        elif len(members[c]) == 1:
            # generator.hpp: p_c = x_i, the target cosine is identically 1 (no gradient).
            target_cos.append(torch.tensor(1.0, dtype=torch.float64))
        else:
            target_cos.append(cos[i, target_index[i]])

    branches = []
    target_logit = []
    for i in range(B):
        value, branch = psi(margin, target_cos[i])
        target_logit.append(s * value)
        branches.append(branch)
    target_logit = torch.stack(target_logit)

    onehot = torch.zeros_like(cos)
    onehot[torch.arange(B), torch.tensor(target_index)] = 1.0
    logits = (s * cos + bias[None, :]) * (1.0 - onehot) + onehot * target_logit[:, None]
    loss = (torch.logsumexp(logits, dim=1) - target_logit).mean()
    (grad,) = torch.autograd.grad(loss, E)
    return loss.item(), grad, branches


def relative_error(value, ref):
    return (value - ref).norm().item() / max(ref.norm().item(), FLOOR)


def aging_key(aging):
    if not aging or aging["name"] == "none":
        return ""
    params = ",".join(f"{k}={aging[k]:g}" for k in ("half_life", "max_age") if k in aging)
    return f" + {aging['name']}({params})"


def margin_key(margin):
    name = margin["name"]
    if name == "arcface" and margin["easy_margin"]:
        name = "arcface_easy"
    params = ",".join(f"{k}={margin[k]:g}" for k in ("m", "m1", "m2", "m3") if k in margin)
    return f"{name}({params})" if params else name


def main():
    if len(sys.argv) != 2:
        print("usage: torch_reference.py PATH/TO/dump_cases")
        return 2
    dump = subprocess.run([sys.argv[1]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if dump.returncode != 0:
        print(f"FAIL: {sys.argv[1]} exited with {dump.returncode}: {dump.stderr.strip()}")
        return 1
    cases = json.loads(dump.stdout)
    if not cases:
        print("FAIL: the dump holds no case")
        return 1

    torch.set_grad_enabled(True)
    summary = defaultdict(lambda: {"n": 0, "loss": 0.0, "grad": 0.0, "fail": 0,
                                   "angular": 0, "fallback": 0, "excluded": 0, "full": 0,
                                   "evicted": 0, "tiled": 0, "expired": 0})
    failures = []
    worst = (0.0, None)
    for k, case in enumerate(cases):
        ref_loss, ref_grad, branches = reference(case)
        grad = torch.tensor(case["grad"], dtype=torch.float64)
        loss_err = abs(case["loss"] - ref_loss) / max(abs(ref_loss), FLOOR)
        grad_err = relative_error(grad, ref_grad)
        key = (margin_key(case["margin"]) + aging_key(case.get("aging")), case["generator"])
        row = summary[key]
        row["n"] += 1
        row["loss"] = max(row["loss"], loss_err)
        row["grad"] = max(row["grad"], grad_err)
        row["angular"] += branches.count("angular")
        row["fallback"] += branches.count("fallback")
        stored = set(case["stored_labels"])
        row["excluded"] += len(stored & set(case["labels"]))
        aging = case.get("aging", {"name": "none"})
        row["expired"] += sum(log_weight(aging, case.get("steps_before", 0) - w) == -math.inf
                              for w in case["stored_last_written"])
        row["full"] += len(stored) == case["capacity"]
        row["evicted"] += case["evictions_before"] > 0
        B = len(case["labels"])
        row["tiled"] += len(stored) > max(1, case["workspace_bytes"] // (8 * B))
        err = max(loss_err, grad_err)
        if err > worst[0]:
            worst = (err, k)
        if not (loss_err <= TOLERANCE and grad_err <= TOLERANCE):  # NaN fails too
            row["fail"] += 1
            failures.append(
                f"case {k} ({case['scenario']} step {case['step']}, margin {case['margin']}, "
                f"generator {case['generator']}): loss C++ {case['loss']!r} torch {ref_loss!r} "
                f"(rel {loss_err:.3g}), gradient rel error {grad_err:.3g}")

    print(f"{'margin':<34} {'generator':<23} {'cases':>5} {'loss err':>9} {'grad err':>9}"
          f"  coverage")
    for (margin, generator), row in sorted(summary.items()):
        status = "FAIL" if row["fail"] else "ok"
        print(f"{margin:<34} {generator:<23} {row['n']:>5} {row['loss']:>9.2e} {row['grad']:>9.2e}"
              f"  {status}: {row['excluded']} stale copies excluded, {row['full']} full,"
              f" {row['evicted']} after evictions, {row['tiled']} tiled, {row['expired']} expired,"
              f" targets {row['angular']} angular / {row['fallback']} fallback")
    print(f"worst relative error {worst[0]:.3g} (case {worst[1]}) over {len(cases)} cases,"
          f" tolerance {TOLERANCE:g}")
    for (margin, generator), row in sorted(summary.items()):
        if "+ max_age" in margin and row["expired"] == 0:  # the expiry path must be exercised
            failures.append(f"{margin} {generator}: no case had an expired column")
    if failures:
        print(f"FAIL: {len(failures)} case(s) disagree with torch autograd:")
        for line in failures[:20]:
            print("  " + line)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
