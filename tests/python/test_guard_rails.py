"""What a user gets when a head is misused in a way that would otherwise train worse without an
error: batches of single exemplars (a sampler that is not class-grouped), a second forward before
the backward of the first (its update dropped), embeddings that need no gradient in training mode
(no update), and a gradient scale that is not a positive number. Each raises protomem.Error or
warns once per module; the multi-process forms are in test_ddp.py."""
import warnings

import pytest
import torch

import protomem
from conftest import grouped_batch, train_step

DIM = 8


def head(**kw):
    return protomem.PrototypeMemory(64, DIM, dtype=torch.float64, **kw)


def singles_batch(n, rng, pairs=0):
    """n classes of one exemplar each, then `pairs` classes of two."""
    labels = list(range(100, 100 + n)) + [c for c in range(pairs) for _ in range(2)]
    e = torch.randn(len(labels), DIM, dtype=torch.float64, generator=rng, requires_grad=True)
    return e, torch.tensor(labels)


def test_single_exemplar_batches_raise_by_default(rng):
    h = head()
    train_step(h, *grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng))
    before = h.get_extra_state()
    e, y = singles_batch(6, rng, pairs=2)  # 6 of 8 classes single: refused
    with pytest.raises(protomem.Error, match=r"6 of the batch's 8 classes have a single exemplar "
                                             r".*GroupedBatchSampler"):
        h(e, y)
    assert torch.equal(h.get_extra_state(), before) and not h.pending
    # Half of the classes single (not more): a class-grouped batch with a few short classes.
    e, y = singles_batch(2, rng, pairs=2)
    train_step(h, e, y)
    assert h.last_step["single_exemplar_classes"] == 2
    # Evaluation too: the loss of such a batch means nothing either.
    e, y = singles_batch(4, rng)
    with torch.no_grad(), pytest.raises(protomem.Error, match="single exemplar"):
        h(e, y)


def test_single_exemplar_warn_once_or_allow(rng):
    h = head(single_exemplar="warn")
    e, y = singles_batch(5, rng)
    with pytest.warns(UserWarning, match="5 of the batch's 5 classes have a single exemplar"):
        loss, _ = train_step(h, e, y)
    assert torch.isfinite(loss) and h.stats()["steps"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per module
        train_step(h, *singles_batch(5, rng))
    quiet = head(single_exemplar="allow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_step(quiet, *singles_batch(5, rng))
    assert quiet.last_step["single_exemplar_classes"] == 5
    with pytest.raises(protomem.Error, match="single_exemplar must be 'error', 'warn' or 'allow'"):
        head(single_exemplar="sometimes")


def test_second_forward_before_backward_warns_once(rng):
    h = head()
    e, y = grouped_batch([1, 2], 2, DIM, torch.float64, rng)
    first = h(e, y)
    with pytest.warns(UserWarning, match="previous training forward was dropped"):
        second = h(e, y)
    (first + second).backward()  # the first forward's update is gone: one commit, not two
    assert h.stats()["steps"] == 1
    # Gradient accumulation done right (backward after each forward): no warning, every update.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            h(*grouped_batch([3, 4], 2, DIM, torch.float64, rng)).backward()
    assert h.stats()["steps"] == 4
    # An evaluation forward between a forward and its backward drops that update too.
    again = head()
    loss = again(e, y)
    with pytest.warns(UserWarning, match="dropped"):
        with torch.no_grad():
            again(e, y)
    loss.backward()
    assert again.stats()["steps"] == 0


def test_embeddings_without_grad_in_training_warn_once(rng):
    h = head()
    e, y = grouped_batch([1, 2], 2, DIM, torch.float64, rng)
    with pytest.warns(UserWarning, match="do not require grad"):
        h(e.detach(), y)
    assert h.size == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h(e.detach(), y)  # once per module
        h.eval()
        h(e.detach(), y)  # evaluation: intended, no warning
        h.train()
        with torch.no_grad():
            h(e, y)  # intended, no warning


def test_gradient_scale(rng):
    e, y = grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng)
    exact = head()
    assert exact.gradient_scale == 1.0 and exact.world_size == 1  # 'ddp' in one process: 1
    _, g1 = train_step(exact, e, y)
    scaled = head(gradient_scale=3.0)
    loss, g3 = train_step(scaled, e, y)
    assert torch.allclose(g3, 3 * g1, rtol=0, atol=1e-15)
    assert loss.item() == exact.last_step["loss"]  # the loss is never scaled
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(protomem.Error, match="GradientScale factor = .* must be finite and > 0"):
            scaled.gradient_scale = bad
    assert scaled.gradient_scale == 3.0
    with pytest.raises(protomem.Error, match="gradient_scale must be 'ddp' or a number"):
        head(gradient_scale="mean")
    with pytest.raises(protomem.Error, match="GradientScale factor = -1.0 must be finite"):
        head(gradient_scale=-1)  # refused before the head (a collective when sharded) is built
    assert scaled._clone().gradient_scale == 3.0
