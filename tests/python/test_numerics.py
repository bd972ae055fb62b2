"""Loss and dL/dE of the Python head against (1) a plain-PyTorch autograd reference of the same
step (double: relative error <= 1e-9) and (2) the C++ core's own step() on the same inputs, bit for
bit, for every margin and generator."""
import pytest
import torch

import protomem
from conftest import (aging_log_weights, grouped_batch, reference_step, relative_error,
                      train_step)

MARGINS = [
    protomem.NoMargin(16.0),
    protomem.CosFace(16.0, 0.35),
    protomem.ArcFace(16.0, 0.5),
    protomem.ArcFace(16.0, 1.4),  # large m: targets below cos(pi - m) take the fallback branch
    protomem.ArcFace(16.0, 0.5, True),
    protomem.CombinedMargin(16.0, 1.0, 0.3, 0.2),
    protomem.CombinedMargin(16.0, 3.0, 0.5, 0.1),  # m1 theta + m2 passes pi: the fallback branch
]
GENERATORS = [protomem.ExemplarMean(), protomem.DetachedExemplarMean(), protomem.LeaveOneOut()]
DIM = 8


def warmed_head(margin, generator, dtype, rng, mining=None, **kw):
    """A head whose memory holds earlier classes (some of which the test batch brings again)."""
    head = protomem.PrototypeMemory(40, DIM, margin=margin, generator=generator, dtype=dtype,
                                    mining=mining, **kw)
    for first in (0, 6, 12):
        e, y = grouped_batch(range(first, first + 6), 3, DIM, dtype, rng)
        train_step(head, e, y)
    assert head.size == 18
    return head


def the_batch(dtype, rng):
    # classes 4, 5 stored (stale copies excluded), 30, 31, 32 new; uneven exemplar counts
    labels = torch.tensor([4, 30, 4, 5, 31, 30, 5, 32, 31, 32, 4], dtype=torch.int64)
    e = torch.randn(len(labels), DIM, dtype=dtype, generator=rng)
    return e, labels


@pytest.mark.parametrize("margin", MARGINS, ids=repr)
@pytest.mark.parametrize("generator", GENERATORS, ids=repr)
def test_double_matches_autograd_reference(margin, generator, rng):
    for case in range(3):
        # The reference knows no aging: NoAging explicitly (the default is AgeDecay(8)).
        head = warmed_head(margin, generator, torch.float64, rng, aging=protomem.NoAging())
        labels_before, prototypes_before, _ = head.contents()
        e, y = the_batch(torch.float64, rng)
        loss, grad = train_step(head, e, y)
        ref_loss, ref_grad = reference_step(e, y, labels_before, prototypes_before, margin, generator)
        assert relative_error(loss, ref_loss) <= 1e-9, (case, float(loss), float(ref_loss))
        assert relative_error(grad, ref_grad) <= 1e-9, case
        assert grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", MARGINS, ids=repr)
@pytest.mark.parametrize("generator", GENERATORS, ids=repr)
def test_bit_identical_to_core_step(dtype, margin, generator, rng):
    head = warmed_head(margin, generator, dtype, rng)
    twin = head._clone()
    assert torch.equal(twin.get_extra_state(), head.get_extra_state())
    e, y = the_batch(dtype, rng)
    loss, grad = train_step(head, e, y)
    core_loss, core_grad, _ = twin._core_step(e, y)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert loss.item() == core_loss
    assert torch.equal(grad, core_grad)
    # and the committed memories agree byte for byte
    assert torch.equal(head.get_extra_state(), twin.get_extra_state())


def test_float_with_mining_bit_identical_to_core(rng):
    mining = protomem.DoppelgangerMining(3, 64)
    head = warmed_head(protomem.CosFace(16.0, 0.3), protomem.ExemplarMean(), torch.float32, rng,
                       mining=mining)
    twin = head._clone()
    e, y = the_batch(torch.float32, rng)
    loss, grad = train_step(head, e, y)
    core_loss, core_grad, _ = twin._core_step(e, y)
    assert loss.item() == core_loss and torch.equal(grad, core_grad)
    assert torch.equal(head.get_extra_state(), twin.get_extra_state())
    found, cosines = head.doppelgangers(30)
    assert len(found) == 3 and torch.all(cosines[:-1] >= cosines[1:])


def test_row_strided_embeddings_are_read_in_place(rng):
    head = warmed_head(protomem.CosFace(16.0, 0.35), protomem.ExemplarMean(), torch.float64, rng)
    twin = head._clone()
    e, y = the_batch(torch.float64, rng)
    wide = torch.zeros(len(y), 3 * DIM, dtype=torch.float64)
    wide[:, DIM:2 * DIM] = e
    leaf = wide.clone().requires_grad_(True)
    strided = leaf[:, DIM:2 * DIM]  # row stride 3 D: not contiguous, each row is
    assert not strided.is_contiguous() and strided.stride(1) == 1
    loss = head(strided, y)
    loss.backward()
    core_loss, core_grad, _ = twin._core_step(e, y)
    assert loss.item() == core_loss
    assert torch.equal(leaf.grad[:, DIM:2 * DIM], core_grad)
    assert not leaf.grad[:, :DIM].any() and not leaf.grad[:, 2 * DIM:].any()


def test_loss_scale_and_sum_follow_autograd(rng):
    head = warmed_head(protomem.ArcFace(16.0, 0.5), protomem.ExemplarMean(), torch.float64, rng)
    twin = head._clone()
    e, y = the_batch(torch.float64, rng)
    a = e.clone().requires_grad_(True)
    (3.0 * head(a, y)).backward()
    b = e.clone().requires_grad_(True)
    twin(b, y).backward()
    assert torch.allclose(a.grad, 3.0 * b.grad, rtol=1e-15, atol=0)


AGINGS = [protomem.NoAging(), protomem.AgeDecay(2.0), protomem.AgeDecay(8.0),
          protomem.AgeDecay(4.0, 1), protomem.MaxAge(1), protomem.MaxAge(0)]


@pytest.mark.parametrize("aging", AGINGS, ids=repr)
def test_aging_keyword_matches_the_reference_with_log_weights(aging, rng):
    # Stored classes of ages 0, 1 and 2 (three warm-up steps): each aging policy, passed by
    # keyword, weighs their columns by its log pi(age) - the reference adds the same log-weights.
    margin, generator = protomem.CosFace(16.0, 0.35), protomem.ExemplarMean()
    head = warmed_head(margin, generator, torch.float64, rng, aging=aging)
    assert head.aging.__class__ is aging.__class__ and head.policies()[5] == aging.name
    labels_before, prototypes_before, _ = head.contents()
    weights = aging_log_weights(aging, head.ages())
    e, y = the_batch(torch.float64, rng)
    loss, grad = train_step(head, e, y)
    ref_loss, ref_grad = reference_step(e, y, labels_before, prototypes_before, margin, generator,
                                        weights)
    assert relative_error(loss, ref_loss) <= 1e-9, (float(loss), float(ref_loss))
    assert relative_error(grad, ref_grad) <= 1e-9
    if not isinstance(aging, protomem.NoAging):  # and it is not the loss without aging
        no_aging, _ = reference_step(e, y, labels_before, prototypes_before, margin, generator)
        assert abs(float(loss) - float(no_aging)) > 1e-6


def test_default_aging_is_age_decay_8(rng):
    head = protomem.PrototypeMemory(8, DIM)
    assert isinstance(head.aging, protomem.AgeDecay) and head.aging.half_life == 8.0
    assert head.aging.max_age is None and head.policies()[5] == "age_decay"


@pytest.mark.parametrize("storage", ["bfloat16", "float16", torch.bfloat16])
def test_narrow_storage_is_close_to_float32(storage, rng):
    # float32 arithmetic over bf16 / fp16 prototypes: the loss within the storage's rounding of
    # the float32 head's; the stored prototypes are the rounded float32 ones.
    margin, generator = protomem.CosFace(16.0, 0.35), protomem.ExemplarMean()
    seed = int(torch.randint(0, 1 << 30, (1,), generator=rng))
    wide = warmed_head(margin, generator, torch.float32, torch.Generator().manual_seed(seed))
    narrow = warmed_head(margin, generator, torch.float32, torch.Generator().manual_seed(seed),
                         storage=storage)
    name = storage if isinstance(storage, str) else "bfloat16"
    assert narrow.storage == name and wide.storage == "float32" and narrow.dtype == torch.float32
    rounding = torch.bfloat16 if name == "bfloat16" else torch.float16
    assert torch.equal(narrow.prototypes(), wide.prototypes().to(rounding).float())
    e, y = the_batch(torch.float32, rng)
    a, ga = train_step(wide, e, y)
    b, gb = train_step(narrow, e, y)
    tol = 2e-2 if name == "bfloat16" else 2e-3
    assert relative_error(b, a) <= tol and relative_error(gb, ga) <= 10 * tol
    with pytest.raises(protomem.Error, match="float64"):
        protomem.PrototypeMemory(8, DIM, dtype=torch.float64, storage="bfloat16")
    with pytest.raises(protomem.Error, match="storage must be"):
        protomem.PrototypeMemory(8, DIM, storage="int8")
