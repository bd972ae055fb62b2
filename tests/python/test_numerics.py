"""Loss and dL/dE of the Python head against (1) a plain-PyTorch autograd reference of the same
step (double: relative error <= 1e-9) and (2) the C++ core's own step() on the same inputs, bit for
bit, for every margin and generator."""
import math

import pytest
import torch
import torch.nn.functional as F

import protomem
from conftest import (aging_log_weights, grouped_batch, reference_step, relative_error,
                      train_step)

MARGINS = [
    protomem.NoMargin(16.0),
    protomem.CosFace(16.0, 0.35),
    protomem.ArcFace(16.0, 0.5),
    protomem.ArcFace(16.0, 1.4),  # large m: targets below cos(pi - m) take the fallback branch
    protomem.ArcFace(16.0, 0.5, True),
    protomem.ArcFace(16.0, 1.4, straight_through=True),  # arcface_torch's rule: no fallback
    protomem.ArcFace(16.0, 0.5, True, True),
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


# ---- arcface_torch's margins ------------------------------------------------------------------
# An independent re-implementation of insightface arcface_torch's losses.CombinedMarginLoss.forward
# as published (recognition/arcface_torch/losses.py: the ArcFace branch adds m2 to the angle inside
# torch.no_grad(), in place on the logits; the CosFace branch subtracts m3 through autograd; any
# other (m1, m3) raises), fed as PartialFC_V2 feeds it (cosines clamped to [-1, 1]) and followed by
# the cross-entropy over [stored prototypes | batch prototypes]. `easy_margin` is not in the
# published no_grad branch (the attribute exists but is never read there): the variant here applies
# the easy-margin rule (margin only where cos > 0) inside the same no_grad block, which is what
# protomem's ArcFace(easy_margin=True, straight_through=True) claims to compute.


class Mock:
    """An object with the attributes of an arcface_torch margin (the class name matters for
    losses.ArcFace / losses.CosFace)."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def arcface_torch_margin(logits, labels, s, m1, m2, m3, easy_margin=False):
    index = torch.where(labels != -1)[0]
    target = logits[index, labels[index].view(-1)]
    if m1 == 1.0 and m3 == 0.0:
        with torch.no_grad():
            if easy_margin:
                shifted = torch.cos(torch.acos(target) + m2)
                final = torch.where(target > 0, shifted, target)
                logits[index, labels[index].view(-1)] = final
            else:
                target.arccos_()
                logits.arccos_()
                logits[index, labels[index].view(-1)] = target + m2
                logits.cos_()
        return logits * s
    if m3 > 0:
        logits[index, labels[index].view(-1)] = target - m3
        return logits * s
    raise RuntimeError("arcface_torch raises")


def arcface_torch_classic_margin(logits, labels, s, m, easy_margin=False):
    """The ArcFace branch of arcface_torch's earlier losses.py (torch.where on the cosine,
    autograd through it): the target cos(theta + m) where cos > cos(pi - m), else cos - m sin m;
    with easy_margin, cos(theta + m) where cos > 0, else cos."""
    index = torch.where(labels != -1)[0]
    target = logits[index, labels[index].view(-1)]
    shifted = target * math.cos(m) - torch.sqrt(1.0 - target * target) * math.sin(m)
    if easy_margin:
        final = torch.where(target > 0, shifted, target)
    else:
        final = torch.where(target > math.cos(math.pi - m), shifted,
                            target - math.sin(math.pi - m) * m)
    logits[index, labels[index].view(-1)] = final
    return logits * s


def arcface_torch_step(e, labels, stored_labels, stored_prototypes, margin_fn):
    """Loss and dL/dE: the columns as protomem's (batch classes: normalised exemplar means with
    gradient; stored classes not in the batch: constants), the logits by `margin_fn`."""
    e = e.detach().clone().requires_grad_(True)
    x = F.normalize(e, dim=1)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add(0, inverse, x)
    p = F.normalize(sums, dim=1)
    W = stored_prototypes[~torch.isin(stored_labels, classes)].to(x.dtype)
    cosines = torch.cat([x @ W.t(), x @ p.t()], dim=1).clamp(-1, 1)
    targets = inverse + W.shape[0]
    target_cos = cosines.detach().gather(1, targets[:, None]).squeeze(1)  # before margin_fn's edits
    loss = F.cross_entropy(margin_fn(cosines, targets), targets)
    loss.backward()
    return loss.detach(), e.grad, target_cos


def batch_past_threshold(rng):
    """the_batch plus class 33, whose first exemplar points away from its class mean: its target
    cosine is about -0.96, below cos(pi - 0.5) = -0.878, where arcface_torch's target rises again
    and protomem's exact ArcFace takes its fallback."""
    e, y = the_batch(torch.float64, rng)
    u = torch.randn(DIM, dtype=torch.float64, generator=rng)
    u = u / u.norm()
    odd = torch.stack([u, -2.0 * u + 0.15 * torch.randn(DIM, dtype=torch.float64, generator=rng),
                       -2.0 * u + 0.15 * torch.randn(DIM, dtype=torch.float64, generator=rng)])
    return torch.cat([e, odd]), torch.cat([y, torch.tensor([33, 33, 33])])


def head_and_state(margin, seed):
    head = warmed_head(margin, protomem.ExemplarMean(), torch.float64,
                       torch.Generator().manual_seed(seed), aging=protomem.NoAging())
    labels, prototypes, _ = head.contents()
    return head, labels, prototypes


# (CombinedMarginLoss's s, m1, m2, m3): ArcFace, ArcFace with m2 = 0 (plain cosine), CosFace, and
# the CosFace branch with m2 and m1 set (arcface_torch ignores them).
ARCFACE_TORCH_CONFIGS = [(32.0, 1.0, 0.5, 0.0), (32.0, 1.0, 0.0, 0.0), (32.0, 1.0, 0.0, 0.35),
                         (32.0, 1.0, 0.3, 0.2), (32.0, 1.2, 0.3, 0.2)]


@pytest.mark.filterwarnings("ignore:protomem. arcface_torch")
@pytest.mark.parametrize("config", ARCFACE_TORCH_CONFIGS, ids=str)
@pytest.mark.parametrize("past_threshold", [False, True], ids=["plain", "past-threshold"])
def test_straight_through_matches_arcface_torch(config, past_threshold):
    s, m1, m2, m3 = config
    margin = protomem.margin_from_insightface(Mock(s=s, m1=m1, m2=m2, m3=m3),
                                              straight_through=True)
    rng = torch.Generator().manual_seed(7)
    head, stored_labels, stored = head_and_state(margin, 11)
    e, y = batch_past_threshold(rng) if past_threshold else the_batch(torch.float64, rng)
    loss, grad = train_step(head, e, y)
    ref_loss, ref_grad, target_cos = arcface_torch_step(
        e, y, stored_labels, stored, lambda c, t: arcface_torch_margin(c, t, s, m1, m2, m3))
    assert relative_error(loss, ref_loss) <= 1e-10, (float(loss), float(ref_loss))
    assert relative_error(grad, ref_grad) <= 1e-10
    assert grad.abs().max() > 0
    if past_threshold:
        # the rising part of cos(theta + 0.5) is reached: theta > pi - 0.5
        assert float(target_cos.min()) < -math.cos(0.5)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_default_arcface_is_the_exact_gradient_not_arcface_torchs(easy_margin):
    # protomem.ArcFace(s, m) (exact gradient) against the same step by arcface_torch's rule: the
    # same loss where the forwards agree (no target past pi - m; with easy_margin everywhere, so
    # the batch also has a target below 0, the easy margin's plain-cosine side), a gradient
    # measurably apart; the straight-through ArcFace matches arcface_torch's to rounding.
    s, m = 32.0, 0.5
    rng = torch.Generator().manual_seed(8)
    straight, stored_labels, stored = head_and_state(protomem.ArcFace(s, m, easy_margin, True), 12)
    exact = straight._clone()
    exact.margin = protomem.ArcFace(s, m, easy_margin)
    assert not exact.margin.straight_through and straight.margin.straight_through
    e, y = batch_past_threshold(rng) if easy_margin else the_batch(torch.float64, rng)
    st_loss, st_grad = train_step(straight, e, y)
    ex_loss, ex_grad = train_step(exact, e, y)
    ref_loss, ref_grad, target_cos = arcface_torch_step(
        e, y, stored_labels, stored,
        lambda c, t: arcface_torch_margin(c, t, s, 1.0, m, 0.0, easy_margin=easy_margin))
    if easy_margin:
        assert float(target_cos.min()) < 0 < float(target_cos.max())
    else:
        assert float(target_cos.min()) > -math.cos(m)  # no fallback anywhere
    assert relative_error(st_loss, ref_loss) <= 1e-10
    assert relative_error(st_grad, ref_grad) <= 1e-10
    assert relative_error(ex_loss, ref_loss) <= 1e-10
    gap = relative_error(ex_grad, ref_grad)
    print(f"easy_margin={easy_margin}: exact vs arcface_torch's gradient, largest element "
          f"difference over the largest element: {gap:.3f}")  # docs/python.md quotes it
    assert gap > 1e-2  # the gradients differ, measurably
    # The exact one is the gradient of arcface_torch's earlier, autograd ArcFace branch.
    old_loss, old_grad, _ = arcface_torch_step(
        e, y, stored_labels, stored,
        lambda c, t: arcface_torch_classic_margin(c, t, s, m, easy_margin=easy_margin))
    assert relative_error(ex_loss, old_loss) <= 1e-10
    assert relative_error(ex_grad, old_grad) <= 1e-10


def test_exact_arcface_takes_the_fallback_where_arcface_torch_rises():
    # Past theta = pi - m the default ArcFace's target is cos - m sin m (monotone, as in
    # arcface_torch's earlier branch), arcface_torch's current one cos(theta + m): the losses
    # differ there.
    s, m = 32.0, 0.5
    rng = torch.Generator().manual_seed(9)
    head, stored_labels, stored = head_and_state(protomem.ArcFace(s, m), 13)
    e, y = batch_past_threshold(rng)
    loss, grad = train_step(head, e, y)
    now_loss, _, target_cos = arcface_torch_step(
        e, y, stored_labels, stored, lambda c, t: arcface_torch_margin(c, t, s, 1.0, m, 0.0))
    old_loss, old_grad, _ = arcface_torch_step(
        e, y, stored_labels, stored, lambda c, t: arcface_torch_classic_margin(c, t, s, m))
    assert float(target_cos.min()) < -math.cos(m)
    assert relative_error(loss, old_loss) <= 1e-10 and relative_error(grad, old_grad) <= 1e-10
    assert abs(float(loss) - float(now_loss)) > 1e-3
