"""examples/python/arcface_torch_style.py (train_v2.py's shape with protomem for PartialFC_V2) on 2
gloo processes: DDP, CombinedMarginLoss arguments, gradient accumulation, autocast + GradScaler,
one checkpoint per rank. A run stopped at step 12 and resumed from its per-rank checkpoints ends
exactly where a straight run ends (losses, backbone, memory), with and without autocast."""
import json
import os
import sys

import pytest
import torch

from conftest import ROOT, run_ranks

SCRIPT = os.path.join(ROOT, "examples", "python", "arcface_torch_style.py")


def run(tmp_path, output, *args, world=2):
    store = tmp_path / f"store-{output.name}-{len(list(tmp_path.iterdir()))}"
    results = run_ranks(world, lambda r: [sys.executable, SCRIPT, "--rank", str(r), "--world-size",
                                          str(world), "--store", str(store), "--output",
                                          str(output), *args])
    for code, out, err in results:
        assert code == 0, err
    return [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]


@pytest.mark.parametrize("fp16", [False, True])
def test_resumed_run_equals_straight_run(tmp_path, fp16):
    extra = ["--fp16"] if fp16 else []
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run(tmp_path, straight, "--steps", "24", *extra)
    run(tmp_path, resumed, "--steps", "24", "--stop-after", "12", *extra)
    b = run(tmp_path, resumed, "--steps", "24", "--resume", *extra)
    for rank in (0, 1):
        assert a[rank]["global_step"] == b[rank]["global_step"] == 24
        assert a[rank]["losses"] == b[rank]["losses"]
        assert a[rank]["memory"] == b[rank]["memory"]
        x = torch.load(straight / f"checkpoint_gpu_{rank}.pt")
        y = torch.load(resumed / f"checkpoint_gpu_{rank}.pt")
        for key, value in x["state_dict_backbone"].items():
            assert torch.equal(value, y["state_dict_backbone"][key]), key
        # each rank's checkpoint holds its shard (and an id of its save): compare what is stored
        assert a[rank]["stored"] == b[rank]["stored"] and len(a[rank]["stored"]) > 0
        assert a[rank]["prototypes"] == b[rank]["prototypes"]
        assert x["state_dict_softmax_fc"]["_extra_state"].numel() > 0
    assert a[0]["losses"] == a[1]["losses"]  # the global batch's loss, the same on every rank
    assert all(map(lambda v: v == v and 0 < v < 1e3, a[0]["losses"]))  # finite, positive
    assert a[0]["memory"]["steps"] == 24 and a[0]["memory"]["insertions"] > 0
