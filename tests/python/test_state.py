"""state_dict / load_state_dict / torch.save / save / load: round trips continue bit-identically;
corrupt or mismatched state is rejected with protomem.Error and the memory unchanged; a checkpoint
of other policies is adopted with its policies (as C++ load())."""
import io

import pytest
import torch

import protomem
from conftest import checkpoint_bytes, grouped_batch, train_step

DIM = 6


def make(**kw):
    kw.setdefault("margin", protomem.ArcFace(16.0, 0.4))
    kw.setdefault("refresh", protomem.Momentum(0.3))
    return protomem.PrototypeMemory(20, DIM, **kw)


def batches(count, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(count):
        classes = torch.randperm(40, generator=g)[:5].tolist()
        out.append(grouped_batch(classes, 3, DIM, dtype, g))
    return out


def run(head, steps):
    return [train_step(head, e, y) for e, y in steps]


def assert_same_run(a, b):
    for (la, ga), (lb, gb) in zip(a, b):
        assert la.item() == lb.item() and torch.equal(ga, gb)


@pytest.mark.parametrize("mining", [None, protomem.DoppelgangerMining(4, 100)], ids=["none", "mining"])
def test_state_dict_round_trip_continues_bit_identically(mining):
    head = make(mining=mining)
    run(head, batches(8, 1))  # evicts: 40 classes through 20 slots
    assert head.stats()["evictions"] > 0
    state = head.state_dict()
    assert set(state) == {"_extra_state"} and state["_extra_state"].dtype == torch.uint8

    buffer = io.BytesIO()
    torch.save({"head": state}, buffer)
    buffer.seek(0)
    restored = make(mining=mining)
    restored.load_state_dict(torch.load(buffer)["head"])
    assert torch.equal(restored.get_extra_state(), head.get_extra_state())
    for a, b in zip(restored.contents(), head.contents()):
        assert torch.equal(a, b)
    if mining is not None:
        for label in head.labels().tolist():
            assert all(torch.equal(x, y) for x, y in zip(restored.doppelgangers(label),
                                                          head.doppelgangers(label)))
    later = batches(6, 2)
    assert_same_run(run(head, later), run(restored, later))
    assert torch.equal(restored.get_extra_state(), head.get_extra_state())


def test_save_load_files_are_the_state_dict_bytes(tmp_path):
    head = make()
    run(head, batches(5, 3))
    path = tmp_path / "memory.ckpt"
    head.save(path)
    assert path.read_bytes() == bytes(head.get_extra_state().numpy())
    restored = make()
    restored.load(path)
    later = batches(4, 4)
    assert_same_run(run(head, later), run(restored, later))


def test_nested_module_state_dict_carries_the_memory():
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, DIM), "head": make()})
    run(model["head"], batches(3, 5))
    state = model.state_dict()
    assert "head._extra_state" in state
    other = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, DIM), "head": make()})
    other.load_state_dict(state)
    assert torch.equal(other["head"].get_extra_state(), model["head"].get_extra_state())


def corruptions(good):
    flipped = good.clone()
    flipped[len(good) // 2] ^= 0x40
    crc = good.clone()
    crc[-1] ^= 1
    magic = good.clone()
    magic[0] = ord("X")
    return {
        "flipped byte": flipped,
        "checksum": crc,
        "magic": magic,
        "truncated": good[:-9].clone(),
        "empty": good[:0].clone(),
        "trailing bytes": torch.cat([good, torch.zeros(3, dtype=torch.uint8)]),
        "int64 tensor": good.to(torch.int64),
        "2-D tensor": good.view(1, -1),
    }


def test_corrupt_state_is_rejected_and_memory_unchanged(tmp_path):
    head = make()
    run(head, batches(5, 6))
    good = head.get_extra_state()
    for name, bad in corruptions(good).items():
        with pytest.raises(protomem.Error) as info:
            head.load_state_dict({"_extra_state": bad})
        assert "protomem" in str(info.value), name
        assert torch.equal(head.get_extra_state(), good), name
        path = tmp_path / "bad.ckpt"
        if bad.dtype == torch.uint8 and bad.dim() == 1:
            path.write_bytes(bytes(bad.numpy()))
            with pytest.raises(protomem.Error):
                head.load(path)
            assert torch.equal(head.get_extra_state(), good), name
    with pytest.raises(protomem.Error):
        head.load_state_dict({"_extra_state": "not a tensor"})
    with pytest.raises(protomem.Error, match="cannot open"):
        head.load(tmp_path / "missing.ckpt")
    assert torch.equal(head.get_extra_state(), good)
    # and it still trains as if nothing had happened
    twin = make()
    twin.load_state_dict({"_extra_state": good})
    later = batches(2, 7)
    assert_same_run(run(head, later), run(twin, later))


@pytest.mark.parametrize("other, message", [
    (lambda: make(dtype=torch.float64), "float32"),
    (lambda: protomem.PrototypeMemory(20, DIM + 1, margin=protomem.ArcFace(16.0, 0.4),
                                      refresh=protomem.Momentum(0.3)), "dim"),
    (lambda: protomem.PrototypeMemory(3, DIM, margin=protomem.ArcFace(16.0, 0.4),
                                      refresh=protomem.Momentum(0.3)), "capacity"),
])
def test_mismatched_state_is_rejected(other, message):
    head = make()
    run(head, batches(3, 8))
    target = other()
    run_target = target.dtype == torch.float32 and target.dim == DIM and target.capacity >= 5
    if run_target:
        run(target, batches(1, 9))
    before = target.get_extra_state()
    with pytest.raises(protomem.Error, match=message):
        target.load_state_dict(head.state_dict())
    assert torch.equal(target.get_extra_state(), before)


@pytest.mark.parametrize("other", [
    lambda: make(margin=protomem.CosFace(16.0, 0.4)),
    lambda: make(refresh=protomem.Replace(), queue=protomem.FIFO()),
    lambda: make(mining=protomem.DoppelgangerMining(2, 100), aging=protomem.NoAging()),
    lambda: make(storage="bfloat16"),
], ids=["margin", "refresh-queue", "mining-aging", "bfloat16"])
def test_checkpoint_of_other_policies_is_adopted_with_them(other):
    head = make(mining=protomem.DoppelgangerMining(4, 100), aging=protomem.MaxAge(50))
    run(head, batches(3, 8))
    target = other()
    target.load_state_dict(head.state_dict())
    assert target.policies() == head.policies()
    assert target.margin.m == 0.4 and target.refresh.a == 0.3 and target.aging.max_age == 50
    # k and the rows come from the checkpoint; table_capacity is not stored in it (a bound of the
    # table, not part of its state): a memory that held DoppelgangerMining keeps its own, one that
    # held another mining policy gets DoppelgangerMining's default (2^16).
    assert target.mining.k == 4 and target.mining.table_capacity in (100, 1 << 16)
    for label in head.labels().tolist():
        assert all(torch.equal(x, y) for x, y in zip(target.doppelgangers(label),
                                                      head.doppelgangers(label)))
    later = batches(3, 9)
    if target.storage == "float32":  # the same memory: it continues bit-identically
        assert torch.equal(target.get_extra_state(), head.get_extra_state())
        assert_same_run(run(head, later), run(target, later))
    else:  # bf16 storage rounds the prototypes it loads
        assert torch.equal(target.labels(), head.labels())


def test_handwritten_checkpoint_loads_exactly():
    # Written from the documented format, not by the library: labels, rows and ages come back.
    g = torch.Generator().manual_seed(10)
    rows = torch.nn.functional.normalize(torch.randn(5, DIM, generator=g), dim=1)
    labels = torch.tensor([7, 3, 11, 0, 42])
    head = protomem.PrototypeMemory(8, DIM, margin=protomem.CosFace(64.0, 0.35))
    head.load_state_dict({"_extra_state": checkpoint_bytes(labels, rows, steps=9)})
    assert torch.equal(head.labels(), labels)
    assert torch.equal(head.prototypes(), rows)
    assert torch.equal(head.last_written(), torch.arange(1, 6))
    assert torch.equal(head.ages(), 9 - torch.arange(1, 6))
    assert torch.equal(head.prototype(11), rows[2])
    assert 42 in head and 43 not in head
    assert head.stats() == {"steps": 9, "refreshes": 0, "insertions": 5, "evictions": 0}
    assert torch.equal(head.get_extra_state(), checkpoint_bytes(labels, rows, steps=9, capacity=8))
    # The format before the aging policies (version 1) loads the same (into a memory without
    # aging: a version-1 checkpoint stores none, so the memory keeps its own).
    old = protomem.PrototypeMemory(8, DIM, margin=protomem.CosFace(64.0, 0.35),
                                   aging=protomem.NoAging())
    old.load_state_dict({"_extra_state": checkpoint_bytes(labels, rows, steps=9, version=1)})
    assert torch.equal(old.get_extra_state(), head.get_extra_state())
