"""The sharded memory under torch.distributed (gloo over a FileStore, 2 and 3 processes): every
process passes only its rows; the loss and its rows' gradients equal a single-process memory's on
the concatenated batch (float64: 1e-9, float32: 1e-5), the stored contents equal it, state_dict()
holds this process's shard and loads back at the same world size, full_state() moves the memory to
one process and a one-process state_dict back, save(path) / load(path) move shard files between
world sizes (2 -> 3, 2 -> 1, 1 -> 2) with a rank's peak memory at load well below the whole
memory, a missing shard raises the same error everywhere, and bad input in one process raises the
same error, naming that process, in every process with nothing changed. Every policy keyword reaches the
sharded memory: FirstInFirstOut, DoppelgangerMining (the same table in every process as in one),
Momentum, AgeDecay with a bound, and bfloat16 storage."""
import textwrap

import pytest

from conftest import run_worker

WORKER = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    import protomem
    rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    torch.set_num_threads(1)

    def close(a, b, tol):
        a, b = a.double(), b.double()
        scale = max(float(b.abs().max()), 1e-300) if b.numel() else 1.0
        return b.numel() == 0 or float((a - b).abs().max()) / scale <= tol

    def share(B, step):
        """Rows [lo, hi) of this rank: uneven cuts, one rank empty every third step."""
        g = torch.Generator().manual_seed(1000 + step)
        cuts = sorted(torch.randint(0, B + 1, (world - 1,), generator=g).tolist())
        bounds = [0] + cuts + [B]
        rows = [bounds[r + 1] - bounds[r] for r in range(world)]
        if step % 3 == 0:
            empty = (step // 3) % world
            rows[(empty + 1) % world] += rows[empty]
            rows[empty] = 0
        lo = sum(rows[:rank])
        return lo, lo + rows[rank]

    def make(dtype, **kw):
        # gradient_scale=1: the exact gradient of the global loss (the default multiplies by the
        # world size for DDP, test_ddp.py)
        return protomem.PrototypeMemory(24, 6, margin=protomem.ArcFace(16, 0.3),
                                        generator=protomem.LeaveOneOut(), dtype=dtype,
                                        gradient_scale=1.0, **kw)

    data = torch.Generator().manual_seed(7)  # the same global batches in every process
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        sharded, ref = make(dtype), make(dtype, per_process=True)
        assert sharded.sharded and not ref.sharded
        for step in range(30):
            C = int(torch.randint(2, 7, (1,), generator=data))
            classes = torch.randperm(70, generator=data)[:C]
            labels = classes.repeat_interleave(2)[torch.randperm(2 * C, generator=data)]
            e = torch.randn(2 * C, 6, generator=data, dtype=dtype)
            lo, hi = share(2 * C, step)
            whole = e.clone().requires_grad_(True)
            loss_ref = ref(whole, labels)
            loss_ref.backward()
            mine = e[lo:hi].clone().requires_grad_(True)
            loss = sharded(mine, labels[lo:hi])
            loss.backward()
            assert close(loss.detach(), loss_ref.detach(), tol), (step, float(loss), float(loss_ref))
            assert close(mine.grad, whole.grad[lo:hi], tol), step
        a, b = sharded.contents(), ref.contents()
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and close(a[1], b[1], tol)
        assert sharded.stats() == ref.stats() and sharded.stats()["evictions"] > 10
        assert (3 in sharded) == (3 in ref) and sharded.size == ref.size

        # state_dict: a collective holding this process's shard only; it loads back into the same
        # rank at the same world size (torch.save per rank, as arcface_torch does).
        state = sharded.state_dict()
        assert state["_extra_state"].numel() < ref.state_dict()["_extra_state"].numel()
        torch.save(state, f"softmax_fc_{dtype}_{rank}.pt")
        dist.barrier()
        back = make(dtype)
        back.load_state_dict(torch.load(f"softmax_fc_{dtype}_{rank}.pt"))
        c = back.contents()
        assert torch.equal(c[0], a[0]) and torch.equal(c[1], a[1]) and torch.equal(c[2], a[2])
        assert back.stats() == sharded.stats()
        # Another rank's shard, or a shard into one process: protomem.Error naming the file API.
        other = torch.load(f"softmax_fc_{dtype}_{(rank + 1) % world}.pt")
        try:
            back.load_state_dict(other)
            raise SystemExit("no error")
        except protomem.Error as error:
            assert f"rank 0 of {world}: state_dict checkpoint is shard 1 of a save by {world} " \
                   "ranks, but it is loaded on rank 0" in str(error), error
            assert "load_shards() (Python: save(path) and load(path))" in str(error), error
        assert torch.equal(back.contents()[0], a[0])
        alone = make(dtype, per_process=True)
        try:
            alone.load_state_dict(state)
            raise SystemExit("no error")
        except protomem.Error as error:
            assert "a shard loads only into its own rank" in str(error), error
        # The check that state_dict moved the memory to one process and back now runs on the
        # gathered export: full_state() is the whole single-process checkpoint.
        alone.load_state_dict({"_extra_state": sharded.full_state()})
        c = alone.contents()
        assert torch.equal(c[0], b[0]) and close(c[1], b[1], tol)
        again = make(dtype)
        again.load_state_dict(ref.state_dict())  # one process's memory into the shards
        d = again.contents()
        assert torch.equal(d[0], b[0]) and torch.equal(d[1], b[1])

        # Bad input in the last process: every process raises the same error, nothing changes.
        before = sharded.contents()
        bad = labels.clone()
        x = e.clone()
        if rank == world - 1:
            x, bad = e[:2].clone(), bad[:2].clone()
            bad[1] = -4
        else:
            x, bad = e[:0].clone(), bad[:0].clone()
        try:
            sharded(x.requires_grad_(True), bad)
            raise SystemExit("no error")
        except protomem.Error as error:
            assert f"rank {world - 1} of {world}: labels[1] = -4" in str(error), error
        after = sharded.contents()
        assert all(torch.equal(u, v) for u, v in zip(before, after)) and not sharded.pending

    # Every policy keyword in the sharded memory, against one process's memory of the same.
    for storage, tol in ((None, 1e-5), ("bfloat16", 2e-2)):
        kw = dict(margin=protomem.CosFace(16, 0.3), refresh=protomem.Momentum(0.5),
                  queue=protomem.FIFO(), mining=protomem.DoppelgangerMining(2, 100),
                  aging=protomem.AgeDecay(4.0, max_age=12), storage=storage, gradient_scale=1.0)
        sharded = protomem.PrototypeMemory(16, 6, **kw)
        ref = protomem.PrototypeMemory(16, 6, per_process=True, **kw)
        assert sharded.sharded and sharded.policies() == ref.policies()
        assert sharded.policies()[3:] == ("first_in_first_out", "doppelganger", "age_decay")
        for step in range(20):
            C = int(torch.randint(2, 6, (1,), generator=data))
            classes = torch.randperm(40, generator=data)[:C]
            labels = classes.repeat_interleave(2)[torch.randperm(2 * C, generator=data)]
            e = torch.randn(2 * C, 6, generator=data)
            lo, hi = share(2 * C, step)
            whole = e.clone().requires_grad_(True)
            loss_ref = ref(whole, labels)
            loss_ref.backward()
            mine = e[lo:hi].clone().requires_grad_(True)
            loss = sharded(mine, labels[lo:hi])
            loss.backward()
            assert close(loss.detach(), loss_ref.detach(), tol), \
                (step, float(loss), float(loss_ref))
            assert close(mine.grad, whole.grad[lo:hi], 10 * tol), step
        a, b = sharded.contents(), ref.contents()
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
        assert sharded.stats() == ref.stats() and sharded.stats()["evictions"] > 5
        assert sharded.storage == ("bfloat16" if storage else "float32")
        if storage is None:  # the doppelganger table: the same rows in every process as in one
            rows = 0
            for label in b[0].tolist():
                x, y = sharded.doppelgangers(label), ref.doppelgangers(label)
                assert torch.equal(x[0], y[0]), label
                assert close(x[1], y[1], 1e-4), label
                rows += int(x[0].numel() > 0)
            assert rows > 0
    print("ok", rank)
''')


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_memory_matches_one_process(tmp_path, world):
    run_worker(tmp_path, WORKER, world)


# ---- checkpoints as shard files: save(path) / load(path) across world sizes ---------------------

SHARDS_WORKER = textwrap.dedent('''
    import os, resource, sys, torch, torch.distributed as dist
    import protomem
    rank, world, store, phase = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    torch.set_num_threads(1)
    # The test's own exchanges (all_gather_object) run on the default group, between the memory's
    # collectives, as a user's would: the binding releases the GIL in every collective, without
    # which the memory's next collective waited forever now and then (gloo's worker thread freeing
    # the user's tensors needed the GIL).

    def make(**kw):
        return protomem.PrototypeMemory(24, 6, margin=protomem.ArcFace(16, 0.3),
                                        generator=protomem.LeaveOneOut(), queue=protomem.FIFO(),
                                        dtype=torch.float64, **kw)

    def same(a, b):
        return all(torch.equal(u, v) for u, v in zip(a, b))

    def errors_everywhere(call):
        """Runs call() expecting protomem.Error; returns every process's message."""
        try:
            call()
            message = "no error"
        except protomem.Error as error:
            message = str(error)
        messages = [None] * world
        dist.all_gather_object(messages, message)
        return messages

    if phase == "save":  # W = 2: steps, then shards, the gathered file, and 1 -> 2
        memory = make()
        data = torch.Generator().manual_seed(5)
        for step in range(25):
            C = int(torch.randint(2, 6, (1,), generator=data))
            labels = torch.randperm(60, generator=data)[:C].repeat_interleave(2)
            e = torch.randn(2 * C, 6, generator=data, dtype=torch.float64)
            mine = slice(rank * C, (rank + 1) * C)
            memory(e[mine].requires_grad_(True), labels[mine]).backward()
        assert memory.stats()["evictions"] > 5
        written = memory.save("memory")
        assert written == f"memory.rank{rank}-of-{world}" and os.path.isfile(written), written
        assert memory.save("whole.ckpt", gather=True) == "whole.ckpt"
        contents = memory.contents()  # a collective: every process
        if rank == 0:
            torch.save((contents, memory.stats()), "expected.pt")
        # 1 -> 2: the one-process file (written by the test) into the shards.
        one_contents, one_stats = torch.load("one_expected.pt")
        two = make()
        two.load("one.ckpt")
        assert same(two.contents(), one_contents) and two.stats() == one_stats
    elif phase == "load":  # W = 3: the 2 shards in; a missing shard fails everywhere alike
        expected, stats = torch.load("expected.pt")
        memory = make()
        memory.load("memory")
        assert same(memory.contents(), expected) and memory.stats() == stats
        # The same error, naming the file, in every process; the memory unchanged.
        messages = errors_everywhere(lambda: memory.load("lost"))
        assert len(set(messages)) == 1, messages
        assert "'lost.rank1-of-2' does not exist (a missing shard?)" in messages[0], messages
        assert same(memory.contents(), expected)
        messages = errors_everywhere(lambda: memory.load("nothing"))
        assert len(set(messages)) == 1 and "'nothing'" in messages[0], messages
    elif phase == "big_save":  # W = 3: the big one-process file in, one shard per process out
        memory = protomem.PrototypeMemory(1 << 15, 128)
        memory.load("big.ckpt")
        memory.save("big")
    elif phase == "big_load":  # W = 3, fresh processes: the peak memory of a shard load
        memory = protomem.PrototypeMemory(1 << 15, 128)
        def status(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        def peak_growth(load):
            open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
            before = status("VmRSS")
            assert status("VmHWM") <= before + (1 << 20)
            load()
            return status("VmHWM") - before
        shard_growth = peak_growth(lambda: memory.load("big"))
        assert memory.size == 1 << 15
        whole_growth = peak_growth(lambda: protomem.PrototypeMemory(1 << 15, 128).load("big.ckpt"))
        growth = [None] * world
        dist.all_gather_object(growth, (shard_growth, whole_growth))
        if rank == 0:
            with open("rss.txt", "w") as f:
                f.write(repr(growth))
    print("ok", rank)
''')


def launch(tmp_path, script, world, *args):
    """Runs `script` in `world` gloo processes in tmp_path; fails with their output."""
    run_worker(tmp_path, script, world, *args, timeout=180)


def test_shard_files_move_between_world_sizes(tmp_path):
    import torch
    import protomem

    def make():
        return protomem.PrototypeMemory(24, 6, margin=protomem.ArcFace(16, 0.3),
                                        generator=protomem.LeaveOneOut(), queue=protomem.FIFO(),
                                        dtype=torch.float64)

    # One process's memory, for 1 -> 2.
    one = make()
    data = torch.Generator().manual_seed(9)
    for _ in range(20):
        labels = torch.randperm(50, generator=data)[:4].repeat_interleave(2)
        one(torch.randn(8, 6, generator=data, dtype=torch.float64).requires_grad_(True),
            labels).backward()
    one.save(tmp_path / "one.ckpt")
    torch.save((one.contents(), one.stats()), tmp_path / "one_expected.pt")

    launch(tmp_path, SHARDS_WORKER, 2, "save")
    shards = sorted(p.name for p in tmp_path.glob("memory.rank*"))
    assert shards == ["memory.rank0-of-2", "memory.rank1-of-2"]
    expected, stats = torch.load(tmp_path / "expected.pt")
    # 2 -> 1: one process reads the shard set (and the gathered file holds the same memory).
    alone = make()
    alone.load(tmp_path / "memory")
    assert all(torch.equal(u, v) for u, v in zip(alone.contents(), expected))
    assert alone.stats() == stats
    gathered = make()
    gathered.load(tmp_path / "whole.ckpt")
    assert all(torch.equal(u, v) for u, v in zip(gathered.contents(), expected))
    # 2 -> 3, and a set missing its rank-1 file.
    (tmp_path / "lost.rank0-of-2").write_bytes((tmp_path / "memory.rank0-of-2").read_bytes())
    launch(tmp_path, SHARDS_WORKER, 3, "load")
    with pytest.raises(protomem.Error, match="lost.rank1-of-2' does not exist"):
        alone.load(tmp_path / "lost")
    assert all(torch.equal(u, v) for u, v in zip(alone.contents(), expected))


def write_big_checkpoint(path, capacity, dim):
    """A single-process checkpoint of `capacity` random float32 prototypes, written directly (the
    header of an empty memory's file, patched; records; CRC-32): filling it by steps would take
    minutes on a shared machine."""
    import zlib

    import numpy as np
    import torch
    import protomem
    empty = path.with_suffix(".empty")
    protomem.PrototypeMemory(capacity, dim).save(empty)
    header = bytearray(empty.read_bytes()[:-12])  # without the record count and the CRC
    header[40:48] = (1).to_bytes(8, "little")  # steps: 1
    header[56:64] = capacity.to_bytes(8, "little")  # insertions
    records = np.zeros(capacity, dtype=[("label", "<i8"), ("slot", "<u8"), ("written", "<u8"),
                                        ("p", "<f4", (dim,))])
    g = torch.Generator().manual_seed(3)
    records["label"] = torch.randperm(4 * capacity, generator=g)[:capacity].numpy()
    records["slot"] = torch.randperm(capacity, generator=g).numpy()
    records["written"] = 1
    p = torch.randn(capacity, dim, generator=g)
    records["p"] = (p / p.norm(dim=1, keepdim=True)).numpy()
    body = bytes(header) + capacity.to_bytes(8, "little") + records.tobytes()
    path.write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))


def test_shard_load_peak_memory_is_a_share(tmp_path):
    """capacity 2^15 x dim 128 float32 = 16 MiB of prototypes over 3 processes: a process's peak
    memory growth while loading the shard set is well below the whole memory (its third plus
    bookkeeping), while loading the whole single-process file grows it by more than the whole."""
    capacity, dim = 1 << 15, 128
    whole = capacity * dim * 4
    write_big_checkpoint(tmp_path / "big.ckpt", capacity, dim)
    launch(tmp_path, SHARDS_WORKER, 3, "big_save")
    assert len(list(tmp_path.glob("big.rank*-of-3"))) == 3
    launch(tmp_path, SHARDS_WORKER, 3, "big_load")
    growth = eval((tmp_path / "rss.txt").read_text())
    print("peak growth at load (bytes): shard set", [s for s, _ in growth],
          "whole file", [w for _, w in growth], "whole memory", whole)
    for shard_growth, whole_growth in growth:
        assert shard_growth < 0.75 * whole, (shard_growth, whole)
        assert whole_growth > whole, (whole_growth, whole)
