"""examples/python/train.py: a checkpointed and resumed run ends bit-identical to a straight run;
a short run trains (held-out TAR above the untrained encoder's). The full-size run and its figures
are in docs/python.md."""
import json
import os
import subprocess
import sys

import torch

from conftest import ROOT

TRAIN = os.path.join(ROOT, "examples", "python", "train.py")
SMALL = ["--identities", "300", "--images-per-identity", "8", "--batch", "32", "--exemplars", "4",
         "--capacity", "128", "--dim", "16", "--hidden", "32", "--threads", "1", "--no-progress"]


def train(*args):
    out = subprocess.run([sys.executable, TRAIN, *SMALL, *args], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resumed_run_is_bit_identical(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train("--steps", "20", "--checkpoint-every", "10", "--no-eval", "--output", str(straight))
    train("--steps", "20", "--checkpoint-every", "10", "--no-eval", "--stop-after", "10",
          "--output", str(resumed))
    half = torch.load(resumed / "checkpoint.pt")
    assert half["global_step"] == 10
    train("--steps", "20", "--checkpoint-every", "10", "--no-eval", "--resume",
          "--output", str(resumed))
    a, b = torch.load(straight / "checkpoint.pt"), torch.load(resumed / "checkpoint.pt")
    assert a["global_step"] == b["global_step"] == 20
    assert a["losses"] == b["losses"]
    for key in a["state_dict_backbone"]:
        assert torch.equal(a["state_dict_backbone"][key], b["state_dict_backbone"][key]), key
    assert torch.equal(a["state_dict_softmax_fc"]["_extra_state"],
                       b["state_dict_softmax_fc"]["_extra_state"])
    assert torch.equal(a["state_sampler"]["sampler"], b["state_sampler"]["sampler"])


def test_short_run_trains(tmp_path):
    # 1000 identities, 150 steps of 16 x 4 images (seconds): TAR@1e-3 0.25 -> 0.60 when written
    result = train("--identities", "1000", "--batch", "64", "--capacity", "512", "--dim", "32",
                   "--hidden", "64", "--steps", "150", "--checkpoint-every", "0",
                   "--eval-identities", "200", "--distractors", "500", "--output", str(tmp_path))
    assert result["final"]["tar@0.001"] > result["untrained"]["tar@0.001"] + 0.2, result
    assert result["final"]["rank1"] > result["untrained"]["rank1"] + 0.2, result
    assert result["memory"]["steps"] == 150 and result["memory"]["stored"] == 512
