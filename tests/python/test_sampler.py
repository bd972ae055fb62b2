"""GroupedBatchSampler: batch shape, epochs, determinism, resumption, ranks, DataLoader use, the
doppelganger fill from a head's table."""
import pytest
import torch

import protomem
from conftest import train_step

C, K = 4, 3


def dataset_labels(classes=10, per_class=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class) * 7 + 3  # labels 3, 10, 17, ...
    return labels[torch.randperm(len(labels), generator=g)]


def test_batches_are_grouped_and_epochs_cover_every_class():
    labels = dataset_labels()
    s = protomem.GroupedBatchSampler(labels, C, K, seed=5)
    assert len(s) == 3 and s.num_classes == 10 and s.num_samples == 50
    seen = set()
    batches = list(s)
    assert len(batches) == 3 and s.position == 3
    for batch in batches:
        assert len(batch) == C * K
        groups = [labels[batch[i * K:(i + 1) * K]] for i in range(C)]
        assert all(len(set(g.tolist())) == 1 for g in groups)
        classes = [int(g[0]) for g in groups]
        assert len(set(classes)) == C
        assert all(len(set(batch[i * K:(i + 1) * K])) == K for i in range(C))  # distinct samples
        seen.update(classes)
    assert seen == set((torch.arange(10) * 7 + 3).tolist())
    assert list(s) != batches  # the next epoch, shuffled afresh


def test_deterministic_and_resumable():
    labels = dataset_labels()
    a = protomem.GroupedBatchSampler(labels, C, K, seed=9)
    first = [a.next_batch() for _ in range(4)]
    state = a.state_dict()
    rest = [a.next_batch() for _ in range(5)]
    b = protomem.GroupedBatchSampler(labels.tolist(), C, K, seed=9)
    assert [b.next_batch() for _ in range(4)] == first
    c = protomem.GroupedBatchSampler(labels, C, K, seed=0)
    c.load_state_dict(state)
    assert c.position == 4 and [c.next_batch() for _ in range(5)] == rest
    assert a.state_dict(position=4)["sampler"].tolist() == state["sampler"].tolist()
    assert a.position == 9


def test_bad_state_is_rejected_and_sampler_unchanged():
    labels = dataset_labels()
    a = protomem.GroupedBatchSampler(labels, C, K, seed=1)
    a.next_batch()
    state = a.state_dict()["sampler"]
    b = protomem.GroupedBatchSampler(labels, C, K, seed=2)
    b.next_batch()
    before = b.state_dict()["sampler"]
    flipped = state.clone()
    flipped[20] ^= 1
    for bad in (flipped, state[:-2].clone(), torch.cat([state, state[:1]])):
        with pytest.raises(protomem.Error):
            b.load_state_dict({"sampler": bad})
        assert torch.equal(b.state_dict()["sampler"], before)
    other_k = protomem.GroupedBatchSampler(labels, C, K + 1, seed=1)
    with pytest.raises(protomem.Error, match="K = 3"):
        other_k.load_state_dict({"sampler": state})
    other_data = protomem.GroupedBatchSampler(dataset_labels(seed=1), C, K, seed=1)
    with pytest.raises(protomem.Error, match="another data set"):
        other_data.load_state_dict({"sampler": state})


def test_ranks_split_the_global_batch():
    labels = dataset_labels(classes=20)
    world = [protomem.GroupedBatchSampler(labels, C, K, seed=3, rank=r, world_size=2) for r in range(2)]
    single = protomem.GroupedBatchSampler(labels, 2 * C, K, seed=3)
    assert len(world[0]) == len(single) == 3
    for _ in range(4):
        assert world[0].next_batch() + world[1].next_batch() == single.next_batch()
    with pytest.raises(protomem.Error, match="rank"):
        protomem.GroupedBatchSampler(labels, C, K, rank=2, world_size=2)


def test_set_epoch_and_resumed_epochs():
    labels = dataset_labels()
    s = protomem.GroupedBatchSampler(labels, C, K, seed=4)
    s.set_epoch(2)
    assert s.position == 6 and s.epoch == 2
    s.next_batch()
    s.set_epoch(2)  # already inside epoch 2: continue it
    assert s.position == 7 and len(list(s)) == 2


def test_dataloader_batch_sampler():
    labels = dataset_labels()
    data = torch.utils.data.TensorDataset(torch.arange(50.0)[:, None], labels)
    s = protomem.GroupedBatchSampler(labels, C, K, seed=6)
    loader = torch.utils.data.DataLoader(data, batch_sampler=s)
    got = list(loader)
    assert len(got) == 3
    for x, y in got:
        assert x.shape == (C * K, 1) and torch.equal(labels[x[:, 0].long()], y)


def test_list_file(tmp_path):
    path = tmp_path / "train.lst"
    lines = ["# comment"] + [f"img/{i} with space.jpg {i % 6}" for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    s = protomem.GroupedBatchSampler.from_list_file(path, 3, 2, seed=1)
    assert s.num_classes == 6 and s.num_samples == 30
    batch = s.next_batch()
    assert [i % 6 for i in batch[::2]] == [i % 6 for i in batch[1::2]]
    path.write_text("a.jpg -1\n")
    with pytest.raises(protomem.Error, match=":1: label '-1' is negative"):
        protomem.GroupedBatchSampler.from_list_file(path, 1, 1)


def test_doppelganger_fill_reads_the_heads_table():
    classes, per_class, dim = 40, 4, 6
    labels = torch.arange(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(11)
    features = torch.randn(classes * per_class, dim, generator=g)
    head = protomem.PrototypeMemory(64, dim, margin=protomem.CosFace(16.0, 0.3),
                                    mining=protomem.DoppelgangerMining(3, 64))
    s = protomem.GroupedBatchSampler(labels, 8, 2, seed=2, doppelganger_fraction=0.25, head=head)
    assert s.mined_per_batch == 2
    mined_total = 0
    for step in range(12):
        batch = s.next_batch()
        info = s.last_batch
        base = info["classes"][:info["base_classes"]]
        mined = info["classes"][info["base_classes"]:info["base_classes"] + info["mined_classes"]]
        rows = set()
        for c in base:
            rows.update(head.doppelgangers(c)[0].tolist())
        assert set(mined) <= rows
        mined_total += len(mined)
        train_step(head, features[batch], labels[batch])
    assert mined_total > 0
    plain = protomem.PrototypeMemory(8, dim)
    s.head = plain
    with pytest.raises(protomem.Error, match="no doppelganger table"):
        s.next_batch()


def test_state_reloads_on_another_number_of_processes():
    # Saved by one process drawing 8 classes a batch; resumed by 4 processes of 4 classes each (16
    # a global batch): the epoch goes on where it was - every class of the epoch is visited, at
    # most one new batch's worth twice - and the seed carries over to the next epochs.
    labels = torch.arange(64).repeat_interleave(3)
    old = protomem.GroupedBatchSampler(labels, 8, 2, seed=5)
    seen = set()
    for _ in range(3):
        old.next_batch()
        seen.update(old.last_batch["classes"])
    state = old.state_dict()
    assert state["global_classes_per_batch"] == 8
    later, first_of_next_epoch = set(), []
    for rank in range(4):
        s = protomem.GroupedBatchSampler(labels, 4, 2, seed=99, rank=rank, world_size=4)
        s.load_state_dict(state)
        assert s.epoch == 0 and s.position == 1  # 24 classes done: one whole batch of 16
        for _ in s:
            later.update(s.last_batch["classes"])
        s.next_batch()  # epoch 1
        first_of_next_epoch += list(s.last_batch["classes"])
    assert seen | later == set(range(64))
    assert len(seen & later) <= 15
    fresh = protomem.GroupedBatchSampler(labels, 16, 2, seed=5)
    fresh.set_epoch(1)
    fresh.next_batch()
    assert first_of_next_epoch == list(fresh.last_batch["classes"])
    # Another K or data set is still refused, the sampler unchanged.
    other_k = protomem.GroupedBatchSampler(labels, 4, 3, seed=1, rank=0, world_size=4)
    with pytest.raises(protomem.Error):
        other_k.load_state_dict(state)
    assert other_k.position == 0
