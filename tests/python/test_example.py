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
         "--capacity", "128", "--dim", "16", "--hidden", "32", "--threads", "1", "--no-progress",
         "--gemm", "eigen"]  # the same GEMM in every run: resumed and straight runs round alike


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


def image_set(folder, identities, images, seed):
    """insightface's layout (header record, images, identity records), 16x16 gray PNG: identity c
    a random pattern, each image of it the pattern plus noise. Written by test_data's writer."""
    from test_data import image_record, png, write_rec
    g = torch.Generator().manual_seed(seed)
    records, key, spans = [], 1, []
    for label, count in enumerate(images):
        base = torch.randint(0, 256, (16, 16), generator=g)
        spans.append((key, key + count))
        for _ in range(count):
            noisy = (base + torch.randint(-30, 31, (16, 16), generator=g)).clamp(0, 255)
            records.append((key, image_record(label, png(noisy.to(torch.uint8), "L"))))
            key += 1
    first = key
    records += [(first + c, image_record(0, b"", (float(a), float(b))))
                for c, (a, b) in enumerate(spans)]
    records.insert(0, (0, image_record(0, b"", (float(first), float(first + len(spans))))))
    return write_rec(os.path.join(folder, identities + ".rec"), records)


DATA = ["--image-size", "16", "--encoder", "cnn", "--width", "4", "--batch", "16",
        "--exemplars", "4", "--capacity", "8", "--dim", "8", "--eval-images", "3"]


def test_image_data_run(tmp_path):
    train_rec = image_set(tmp_path, "train", [4] * 8, seed=1)
    image_set(tmp_path, "heldout", [3] * 4 + [1, 1], seed=2)  # heldout.rec: found beside train.rec
    result = train("--data", train_rec, *DATA, "--steps", "6", "--checkpoint-every", "0",
                   "--output", str(tmp_path / "run"))
    assert result["data"] == {"train_images": 32, "train_identities": 8, "skipped": 0,
                              "heldout_identities": 6, "verification_identities": 4,
                              "distractors": 2, "heldout_skipped": 0}
    assert result["steps"] == 6 and result["memory"]["steps"] == 6
    for key in ("untrained", "final"):
        assert set(result[key]) == {"tar@0.001", "tar@0.0001", "rank1"}
        assert all(0 <= v <= 1 for v in result[key].values())
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["final"] == result["final"] and written["args"]["data"] == train_rec


def test_image_data_resume_is_bit_identical(tmp_path):
    train_rec = image_set(tmp_path, "train", [4] * 8, seed=1)
    common = ["--data", train_rec, *DATA, "--steps", "6", "--checkpoint-every", "3", "--no-eval"]
    train(*common, "--output", str(tmp_path / "a"))
    train(*common, "--stop-after", "3", "--output", str(tmp_path / "b"))
    train(*common, "--resume", "--output", str(tmp_path / "b"))
    a = torch.load(tmp_path / "a" / "checkpoint.pt")
    b = torch.load(tmp_path / "b" / "checkpoint.pt")
    assert a["losses"] == b["losses"] and len(a["losses"]) == 6
    for key in a["state_dict_backbone"]:
        assert torch.equal(a["state_dict_backbone"][key], b["state_dict_backbone"][key]), key


def test_image_data_errors_name_the_file(tmp_path):
    (tmp_path / "train.txt").write_text("missing.png 0\n")
    out = subprocess.run([sys.executable, TRAIN, "--data", str(tmp_path / "train.txt"),
                          "--output", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "heldout.txt" in out.stderr, out.stderr
