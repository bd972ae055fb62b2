"""The sharded memory under torch.distributed (gloo over a FileStore, 2 and 3 processes): every
process passes only its rows; the loss and its rows' gradients equal a single-process memory's on
the concatenated batch (float64: 1e-9, float32: 1e-5), the stored contents equal it, state_dict()
moves the memory to one process and back, and bad input in one process raises the same error,
naming that process, in every process with nothing changed. Every policy keyword reaches the
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

        # state_dict: a collective; the bytes are the single-process checkpoint.
        state = sharded.state_dict()
        alone = make(dtype, per_process=True)
        alone.load_state_dict(state)
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
