"""The nn.Module's behaviour: when the memory is updated, what it stores, input checks, C++ errors,
every policy keyword reaching its C++ policy, the policy setters, distributed refusal, the Partial
FC compatible constructor."""
import copy
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

import protomem
from conftest import ROOT, grouped_batch, train_step

DIM = 8


def head(**kw):
    kw.setdefault("margin", protomem.CosFace(16.0, 0.3))
    return protomem.PrototypeMemory(32, DIM, dtype=torch.float64, **kw)


def test_update_is_committed_by_backward_only(rng):
    h = head()
    e, y = grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng)
    loss = h(e, y)
    assert h.pending and h.stats()["steps"] == 0 and h.size == 0
    loss.backward()
    assert not h.pending and h.stats()["steps"] == 1 and h.size == 3
    # the stored prototype is the normalised mean of the class's normalised exemplars
    x = F.normalize(e.detach(), dim=1)
    for c in (1, 2, 3):
        expected = F.normalize(x[y == c].sum(0), dim=0)
        assert torch.allclose(h.prototype(c), expected, rtol=0, atol=1e-14)
    assert torch.equal(h.labels(), torch.tensor([1, 2, 3]))
    assert torch.equal(h.ages(), torch.zeros(3, dtype=torch.int64))


def test_no_update_without_training(rng):
    h = head()
    train_step(h, *grouped_batch([1, 2], 2, DIM, torch.float64, rng))
    state = h.get_extra_state()
    e, y = grouped_batch([2, 5], 2, DIM, torch.float64, rng)
    with torch.no_grad():
        loss = h(e, y)
    assert loss.grad_fn is None and torch.isfinite(loss)
    h.eval()
    loss = h(e, y)
    assert loss.grad_fn is None
    h.train()
    with pytest.warns(UserWarning, match="do not require grad: .* the memory is not updated"):
        loss = h(e.detach(), y)  # embeddings that do not require grad, in training mode
    assert loss.grad_fn is None
    assert torch.equal(h.get_extra_state(), state)
    # a training forward whose backward never runs is discarded by the next forward (warned)
    h(e, y)
    assert h.pending
    with pytest.warns(UserWarning, match="update of the previous training forward was dropped"):
        h(e.detach(), y)
    assert not h.pending and torch.equal(h.get_extra_state(), state)
    # a late backward of a discarded step commits nothing; a retained graph commits once
    stale = h(e, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each warning is given once per module
        h(e.detach(), y)
    stale.backward()
    assert torch.equal(h.get_extra_state(), state)
    loss = h(e, y)
    loss.backward(retain_graph=True)
    loss.backward()
    assert h.stats()["steps"] == 2


def test_eval_loss_equals_training_loss(rng):
    h = head()
    train_step(h, *grouped_batch([1, 2], 2, DIM, torch.float64, rng))
    e, y = grouped_batch([2, 5], 2, DIM, torch.float64, rng)
    with torch.no_grad():
        evaluation = h(e, y)
    assert h(e, y).item() == evaluation.item()


def test_last_step_and_stats(rng):
    h = head(similar_k=2)
    train_step(h, *grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng))
    loss, _ = train_step(h, *grouped_batch([3, 9], 2, DIM, torch.float64, rng))
    last = h.last_step
    assert last["loss"] == loss.item()
    assert torch.equal(last["classes"], torch.tensor([3, 9]))
    assert last["similar"].shape == (2, 2) and set(last["similar"][1].tolist()) == {1, 2}
    assert last["gemm"] in ("eigen", "blas")  # the library's run-time choice (float64: no bf16)
    assert set(last["gemm_calibration_ms"]) == {"eigen", "blas", "bf16"}
    assert h.stats() == {"steps": 2, "refreshes": 1, "insertions": 4, "evictions": 0}
    assert h.policies() == ("cosface", "exemplar_mean", "replace", "least_recently_written", "none",
                            "age_decay")
    assert "capacity=32" in repr(h)


def test_input_checks_name_the_problem(rng):
    h = head()
    e, y = grouped_batch([1, 2], 2, DIM, torch.float64, rng)
    cases = [
        ((e.float(), y), "dtype torch.float64"),
        ((e.half(), y), "dtype torch.float64"),
        ((e, y.int()), "torch.int64"),
        ((e[:, :4], y), f"B x {DIM}"),
        ((e[0], y), f"B x {DIM}"),
        ((e, y[:3]), "shape \\[4\\]"),
        ((e[:0], y[:0]), "empty batch"),
        ((e.tolist(), y), "torch.Tensor"),
        ((e.to_sparse(), y), "dense"),
    ]
    for args, message in cases:
        with pytest.raises(protomem.Error, match=message):
            h(*args)
    with pytest.raises(protomem.UnsupportedError, match="not yet supported"):
        h(torch.empty(4, DIM, dtype=torch.float64, device="meta"), y)
    assert h.size == 0 and not h.pending


def test_library_errors_reach_python_with_memory_unchanged(rng):
    h = head(num_classes=100)
    train_step(h, *grouped_batch([1, 2], 2, DIM, torch.float64, rng))
    state = h.get_extra_state()
    e, y = grouped_batch([3, 4], 2, DIM, torch.float64, rng)
    bad = y.clone()
    bad[1] = -3
    with pytest.raises(protomem.Error, match=r"labels\[1\] = -3 is negative") as info:
        h(e, bad)
    assert isinstance(info.value, RuntimeError)
    bad[1] = 100
    with pytest.raises(protomem.Error, match=r"outside the declared range \[0, 100\)"):
        h(e, bad)
    zero = e.detach().clone()
    zero[2] = 0
    with pytest.raises(protomem.Error, match="row 2 has norm 0"):
        h(zero.requires_grad_(), y)
    small = protomem.PrototypeMemory(2, DIM, dtype=torch.float64)
    with pytest.raises(protomem.Error, match="capacity is 2"):
        small(*grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng))
    loo = head(generator=protomem.LeaveOneOut())
    with pytest.raises(protomem.Error, match="needs at least 2"):
        loo(*grouped_batch([1, 2], 1, DIM, torch.float64, rng))
    with pytest.raises(protomem.Error, match="label 77 is not in the memory"):
        h.prototype(77)
    assert torch.equal(h.get_extra_state(), state) and not h.pending


def test_policy_parameters_are_validated():
    with pytest.raises(protomem.Error, match="scale s = -1"):
        protomem.CosFace(-1.0, 0.3)
    with pytest.raises(protomem.Error, match="margin m = 2"):
        protomem.ArcFace(64.0, 2.0)
    with pytest.raises(protomem.Error, match=r"outside \[0, 1\)"):
        protomem.Momentum(1.0)
    with pytest.raises(protomem.Error, match="k = 0"):
        protomem.DoppelgangerMining(0, 10)
    with pytest.raises(protomem.Error, match="capacity = 0"):
        protomem.PrototypeMemory(0, DIM)
    with pytest.raises(protomem.Error, match="margin policy must be"):
        protomem.PrototypeMemory(4, DIM, margin=protomem.ExemplarMean())
    with pytest.raises(protomem.Error, match="dtype must be"):
        protomem.PrototypeMemory(4, DIM, dtype=torch.float16)
    # a policy class stands for its default object
    assert protomem.PrototypeMemory(4, DIM, margin=protomem.ArcFace).policies()[0] == "arcface"


def test_every_policy_keyword_reaches_its_cpp_policy():
    # Each keyword, with non-default parameters, comes back from the C++ memory as it was given.
    h = protomem.PrototypeMemory(
        8, 4, margin=protomem.ArcFace(32.0, 0.4, easy_margin=True),
        generator=protomem.LeaveOneOut(), refresh=protomem.Momentum(0.25),
        queue=protomem.FirstInFirstOut(), mining=protomem.DoppelgangerMining(3, 50),
        aging=protomem.AgeDecay(16.0, max_age=100), dtype=torch.float64)
    assert h.policies() == ("arcface", "leave_one_out", "momentum", "first_in_first_out",
                            "doppelganger", "age_decay")
    assert h.margin.s == 32.0 and h.margin.m == 0.4 and h.margin.easy_margin
    assert isinstance(h.generator, protomem.LeaveOneOut) and h.refresh.a == 0.25
    assert isinstance(h.queue, protomem.FirstInFirstOut)
    assert (h.mining.k, h.mining.table_capacity) == (3, 50)
    assert (h.aging.half_life, h.aging.max_age) == (16.0, 100)
    objects = h.policy_objects()
    assert list(objects) == ["margin", "generator", "refresh", "queue", "mining", "aging"]
    c = protomem.PrototypeMemory(8, 4, margin=protomem.CombinedMargin(30.0, 1.1, 0.2, 0.1),
                                 aging=protomem.MaxAge(7))
    assert (c.margin.m1, c.margin.m2, c.margin.m3) == (1.1, 0.2, 0.1) and c.aging.max_age == 7
    assert isinstance(protomem.PrototypeMemory(8, 4, aging=protomem.NoAging).aging,
                      protomem.NoAging)
    # C++'s defaults: DoppelgangerMining(k = 8, table_capacity = 2^16), AgeDecay(half_life = 64)
    mined = protomem.PrototypeMemory(8, 4, mining=protomem.DoppelgangerMining).mining
    assert (mined.k, mined.table_capacity) == (8, 1 << 16)
    assert protomem.AgeDecay().half_life == 64.0 and protomem.MaxAge().max_age == 1024
    assert protomem.PrototypeMemory(8, 4, margin=protomem.NoMargin(5.0)).margin.s == 5.0
    assert isinstance(protomem.PrototypeMemory(8, 4, generator=protomem.DetachedExemplarMean)
                      .generator, protomem.DetachedExemplarMean)
    assert issubclass(protomem.UnsupportedError, protomem.Error)
    assert issubclass(protomem.Error, RuntimeError)


def eviction_run(queue):
    """Capacity 6; classes (0,1,2), then (0,3,4) - class 0 rewritten - then (5,6,7): two evicted."""
    h = protomem.PrototypeMemory(6, 4, queue=queue)
    g = torch.Generator().manual_seed(3)
    for classes in ([0, 1, 2], [0, 3, 4], [5, 6, 7]):
        train_step(h, *grouped_batch(classes, 2, 4, torch.float32, g))
    return h


def test_queue_keyword_decides_the_eviction_order():
    lrw, fifo = eviction_run(protomem.LeastRecentlyWritten()), eviction_run(protomem.FIFO())
    assert lrw.stats()["evictions"] == fifo.stats()["evictions"] == 2
    # LRW: class 0 was rewritten at step 2 and stays; 1 and 2 go. FIFO: 0 and 1 (inserted first).
    assert 0 in lrw and 1 not in lrw and 2 not in lrw
    assert 0 not in fifo and 1 not in fifo and 2 in fifo
    assert sorted(lrw.labels().tolist()) == [0, 3, 4, 5, 6, 7]


def test_setters_go_through_the_checked_cpp_setters(rng):
    h = head(aging=protomem.NoAging())
    train_step(h, *grouped_batch([1, 2, 3], 2, DIM, torch.float64, rng))
    train_step(h, *grouped_batch([4, 6], 2, DIM, torch.float64, rng))  # 1, 2, 3 are 1 step old
    e, y = grouped_batch([2, 5], 2, DIM, torch.float64, rng)
    with torch.no_grad():
        before = h(e, y).item()
    h.set_margin(protomem.CosFace(16.0, 0.1))  # a margin schedule
    assert h.margin.m == 0.1
    with torch.no_grad():
        assert h(e, y).item() < before  # a smaller margin: a smaller loss
    h.margin = protomem.CosFace(16.0, 0.3)  # the property goes through set_margin
    with torch.no_grad():
        assert h(e, y).item() == before
    h.set_aging(protomem.AgeDecay(1.0))
    with torch.no_grad():
        assert h(e, y).item() != before
    h.set_refresh(protomem.Momentum(0.5))
    h.set_generator(protomem.LeaveOneOut)
    h.set_queue(protomem.FirstInFirstOut())
    h.set_mining(protomem.DoppelgangerMining(2, 8))
    assert h.policies() == ("cosface", "leave_one_out", "momentum", "first_in_first_out",
                            "doppelganger", "age_decay")
    state = h.get_extra_state()
    with pytest.raises(protomem.Error, match="margin policy must be"):
        h.set_margin(protomem.Replace())
    with pytest.raises(protomem.Error, match="aging policy must be"):
        h.set_aging(protomem.CosFace())
    assert torch.equal(h.get_extra_state(), state)
    train_step(h, *grouped_batch([7, 8], 2, DIM, torch.float64, rng))
    assert h.doppelgangers(7)[0].numel() > 0  # the new mining policy's table fills


@pytest.mark.parametrize("dtype, storage", [(torch.float32, None), (torch.float64, None),
                                            (torch.float32, "bfloat16"),
                                            (torch.float32, "float16")])
def test_every_policy_combination_constructs_and_trains(dtype, storage):
    margins = [protomem.NoMargin(), protomem.CosFace(), protomem.ArcFace(), protomem.CombinedMargin()]
    generators = [protomem.ExemplarMean(), protomem.DetachedExemplarMean(), protomem.LeaveOneOut()]
    refreshes = [protomem.Replace(), protomem.Momentum(0.5)]
    queues = [protomem.LRW(), protomem.FIFO()]
    minings = [protomem.NoMining(), protomem.DoppelgangerMining(2, 8)]
    agings = [protomem.NoAging(), protomem.MaxAge(4), protomem.AgeDecay(8.0)]
    e = torch.randn(4, 4, dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    n = 0
    for m in margins:
        for g in generators:
            for r in refreshes:
                q, mi, a = queues[n % 2], minings[(n // 2) % 2], agings[n % 3]
                n += 1
                h = protomem.PrototypeMemory(4, 4, m, g, r, q, mi, a, dtype=dtype, storage=storage)
                h(e, y).backward()
                assert h.policies() == (m.name, g.name, r.name, q.name, mi.name, a.name)
                assert h.size == 2


def test_module_plumbing(rng):
    h = head()
    assert list(h.parameters()) == []
    encoder = torch.nn.Linear(4, DIM).double()
    opt = torch.optim.SGD([{"params": encoder.parameters()}, {"params": h.parameters()}], lr=0.1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=rng)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = h(encoder(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert encoder.weight.grad.abs().sum() > 0 and h.size == 3
    twin = copy.deepcopy(h)
    assert torch.equal(twin.get_extra_state(), h.get_extra_state())
    train_step(twin, *grouped_batch([7, 8], 2, DIM, torch.float64, rng))
    assert twin.size == 5 and h.size == 3


class CombinedMarginLoss:
    """The attributes of insightface arcface_torch's losses.CombinedMarginLoss."""

    def __init__(self, s, m1, m2, m3, interclass_filtering_threshold=0):
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold


class ArcFace:
    """The attributes of arcface_torch's losses.ArcFace(s, margin)."""

    def __init__(self, s=64.0, margin=0.5):
        self.s, self.margin = s, margin


class CosFace:
    """The attributes of arcface_torch's losses.CosFace(s, m)."""

    def __init__(self, s=64.0, m=0.4):
        self.s, self.m = s, m


def mapped(margin_loss, straight_through=False):
    """margin_from_insightface's margin and the messages of the warnings it gave (each once)."""
    import protomem._head as head_module
    head_module._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        margin = protomem.margin_from_insightface(margin_loss, straight_through=straight_through)
    return margin, [str(w.message) for w in caught]


def test_margin_from_insightface_every_configuration():
    # arcface_torch's CombinedMarginLoss: m1 = 1, m3 = 0 -> the no_grad ArcFace branch (m2 = 0:
    # the plain cosine); m3 > 0 -> CosFace(m3), m1 and m2 ignored; anything else raises.
    for straight in (False, True):
        arc, said = mapped(CombinedMarginLoss(64, 1.0, 0.5, 0.0), straight)
        assert isinstance(arc, protomem.ArcFace) and (arc.s, arc.m) == (64.0, 0.5) and not said
        assert arc.straight_through is straight and not arc.easy_margin
        none, said = mapped(CombinedMarginLoss(30, 1.0, 0.0, 0.0), straight)
        assert isinstance(none, protomem.NoMargin) and none.s == 30.0 and not said
        cos, said = mapped(CombinedMarginLoss(64, 1.0, 0.0, 0.4), straight)
        assert isinstance(cos, protomem.CosFace) and (cos.s, cos.m) == (64.0, 0.4) and not said
        arc, said = mapped(ArcFace(32.0, 0.3), straight)  # losses.ArcFace: the same no_grad rule
        assert isinstance(arc, protomem.ArcFace) and (arc.s, arc.m) == (32.0, 0.3)
        assert arc.straight_through is straight and not said
        cos, said = mapped(CosFace(32.0, 0.25), straight)
        assert isinstance(cos, protomem.CosFace) and (cos.s, cos.m) == (32.0, 0.25) and not said
    # The CosFace branch ignores m2 and m1: CosFace(m3), with one warning naming what is ignored.
    cos, said = mapped(CombinedMarginLoss(64, 1.0, 0.3, 0.2))
    assert isinstance(cos, protomem.CosFace) and cos.m == 0.2
    assert len(said) == 1 and "ignores m2 = 0.3;" in said[0]
    cos, said = mapped(CombinedMarginLoss(64, 1.35, 0.0, 0.2))
    assert isinstance(cos, protomem.CosFace) and cos.m == 0.2
    assert len(said) == 1 and "ignores m1 = 1.35" in said[0]
    cos, said = mapped(CombinedMarginLoss(64, 1.35, 0.3, 0.2))
    assert isinstance(cos, protomem.CosFace) and "ignores m1 = 1.35 and m2 = 0.3" in said[0]
    # once: the same message is not given again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        protomem.margin_from_insightface(CombinedMarginLoss(64, 1.35, 0.3, 0.2))
        protomem.PartialFCCompatible(CombinedMarginLoss(64, 1.35, 0.3, 0.2), 4, 10)
    assert not caught
    # easy_margin is never read by the ArcFace branch: ignored, with a warning.
    loss = CombinedMarginLoss(64, 1.0, 0.5, 0.0)
    loss.easy_margin = True
    arc, said = mapped(loss)
    assert not arc.easy_margin and len(said) == 1 and "ignores easy_margin = True" in said[0]
    loss.easy_margin = False  # as arcface_torch sets it: no warning
    assert mapped(loss)[1] == []
    # Where arcface_torch raises, so does this.
    for m1, m2, m3 in ((1.35, 0.5, 0.0), (1.35, 0.0, 0.0), (1.0, 0.5, -0.1), (2.0, 0.0, -0.2)):
        with pytest.raises(protomem.Error, match=f"raises for m1 = {m1}, m2 = {m2}, m3 = {m3}"):
            protomem.margin_from_insightface(CombinedMarginLoss(64, m1, m2, m3))
    with pytest.raises(protomem.UnsupportedError, match="interclass_filtering_threshold = 0.1"):
        protomem.margin_from_insightface(CombinedMarginLoss(64, 1.0, 0.5, 0.0, 0.1))
    # arcface_torch filters only above a threshold > 0: 0 and below are no filter
    arc, said = mapped(CombinedMarginLoss(64, 1.0, 0.5, 0.0, -1.0))
    assert isinstance(arc, protomem.ArcFace) and not said
    # Values protomem's margins refuse are refused by them, naming the value.
    with pytest.raises(protomem.Error, match="margin m = 2"):
        protomem.margin_from_insightface(CombinedMarginLoss(64, 1.0, 2.0, 0.0))
    with pytest.raises(protomem.Error, match="margin m = 1.5"):
        protomem.margin_from_insightface(CombinedMarginLoss(64, 1.0, 0.0, 1.5))
    # A protomem margin is used as is; straight_through=True does not silently rewrite it.
    own = protomem.ArcFace(16.0, 0.4)
    assert protomem.margin_from_insightface(own) is own
    with pytest.raises(protomem.Error, match="straight_through=True applies to insightface"):
        protomem.margin_from_insightface(own, straight_through=True)
    st = protomem.ArcFace(16.0, 0.4, straight_through=True)
    assert protomem.margin_from_insightface(st, straight_through=True) is st
    with pytest.raises(protomem.Error, match="straight_through must be True or False; got 1"):
        protomem.margin_from_insightface(CombinedMarginLoss(64, 1.0, 0.5, 0.0), straight_through=1)


def test_arcface_straight_through_keyword():
    arc = protomem.ArcFace(32.0, 0.4, straight_through=True)
    assert arc.straight_through and not arc.easy_margin
    assert not protomem.ArcFace().straight_through  # the exact gradient is the default
    both = protomem.ArcFace(32.0, 0.4, True, True)
    assert both.easy_margin and both.straight_through
    assert "straight_through=True" in repr(arc) and "straight_through=False" in repr(
        protomem.ArcFace())
    h = protomem.PrototypeMemory(8, 4, margin=both, dtype=torch.float64)
    assert h.margin.straight_through and h.margin.easy_margin
    train_step(h, *grouped_batch([1, 2], 2, 4, torch.float64))
    twin = protomem.PrototypeMemory(8, 4, dtype=torch.float64)  # CosFace: adopts the checkpoint's
    twin.set_extra_state(h.get_extra_state())
    assert isinstance(twin.margin, protomem.ArcFace) and twin.margin.straight_through
    assert twin.margin.easy_margin and torch.equal(twin.get_extra_state(), h.get_extra_state())


def test_partial_fc_compatible(rng):
    module = protomem.PartialFCCompatible(CombinedMarginLoss(64, 1.0, 0.5, 0.0), 16, 1000, 0.1,
                                          False)
    assert module.capacity == 100 and module.dim == 16 and module.policies()[0] == "arcface"
    assert not module.margin.straight_through
    st = protomem.PartialFCCompatible(CombinedMarginLoss(64, 1.0, 0.5, 0.0), 16, 1000, 0.1, False,
                                      straight_through=True)
    assert st.margin.straight_through and st.margin.m == 0.5
    e = torch.randn(8, 16, generator=rng, requires_grad=True)
    y = torch.tensor([[1], [1], [5], [5], [9], [9], [999], [999]])  # arcface_torch's [B, 1]
    module(e, y).backward()
    assert module.size == 4
    half = torch.randn(8, 16, generator=rng).half().requires_grad_(True)
    module(half, y.int()).backward()  # PartialFC_V2 accepts these too
    assert half.grad.dtype == torch.float16 and module.stats()["steps"] == 2
    with pytest.raises(protomem.Error, match="declared range"):
        module(e, y.view(-1) + 1)


def test_distributed_memory_built_before_init_is_refused(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch, torch.distributed as dist
        sys.path.insert(0, {os.path.join(ROOT, 'tests', 'python')!r})
        import protomem
        rank = int(sys.argv[1])
        early = protomem.PrototypeMemory(8, 4)  # before init_process_group: one process's memory
        assert not early.sharded
        dist.init_process_group("gloo", init_method="file://{tmp_path}/rendezvous", rank=rank,
                                world_size=2)
        try:
            early(torch.randn(2, 4, requires_grad=True), torch.tensor([rank, rank]))
            print("no error")
        except protomem.UnsupportedError as e:
            assert "before torch.distributed was initialised" in str(e), e
        h = protomem.PrototypeMemory(8, 4, per_process=True)
        assert not h.sharded
        h(torch.randn(2, 4, requires_grad=True), torch.tensor([rank, rank])).backward()
        assert h.size == 1
        try:
            protomem.GroupedBatchSampler(list(range(8)) * 2, 2, 2, 0, rank=rank, world_size=2,
                                         doppelganger_fraction=0.5)
            print("no error")
        except protomem.UnsupportedError:
            pass
        dist.barrier()
        print("ok", rank)
    """)
    path = tmp_path / "worker.py"
    path.write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(path), str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for r in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, out
        assert f"ok {r}" in out and "no error" not in out, out


def test_gemm_can_be_forced(rng):
    e, y = grouped_batch([1, 2], 2, DIM, torch.float64, rng)
    h = protomem.PrototypeMemory(16, DIM, dtype=torch.float64, gemm="eigen")
    train_step(h, e, y)
    train_step(h, *grouped_batch([3, 4], 2, DIM, torch.float64, rng))
    assert h._head.gemm == "eigen" and h.last_step["gemm"] == "eigen"
    with pytest.raises(protomem.Error, match="gemm must be 'auto', 'eigen' or 'blas'; got 'fast'"):
        protomem.PrototypeMemory(16, DIM, gemm="fast")
