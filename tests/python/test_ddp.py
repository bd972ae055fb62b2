"""The sharded head under DistributedDataParallel (gloo over a FileStore, 2 and 4 processes):

- gradient parity: with the default gradient_scale="ddp", the encoder's gradient after DDP
  averages it equals one process's gradient on the concatenated batch (what insightface's
  PartialFC_V2 gives: its all-gather multiplies the gradient by the world size in backward);
  with gradient_scale=1 it is 1/W of that, as before this option existed;
- collective checks: a dtype error in one process raises the same protomem.Error, naming that
  process, in every process; nothing changes, and the next step runs in step on all of them;
- single-exemplar batches are judged on the global batch, alike in every process."""
import textwrap

import pytest

from conftest import run_worker

WORKER = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    import protomem
    rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    torch.set_num_threads(1)
    IN, DIM, CLASSES, K = 12, 8, 6, 2            # each process: CLASSES / world classes x K rows

    def relative(a, b):
        return float((a - b).abs().max() / b.abs().max())

    def global_batch(step):
        g = torch.Generator().manual_seed(100 + step)
        classes = torch.randperm(40, generator=g)[:CLASSES * world // 2]
        labels = classes.repeat_interleave(K)
        return torch.randn(len(labels), IN, generator=g, dtype=torch.float64), labels

    def encoder():
        torch.manual_seed(3)
        return torch.nn.Linear(IN, DIM).double()

    # One process on the whole batch: the gradient PartialFC_V2 gives under DDP.
    reference, one = encoder(), protomem.PrototypeMemory(32, DIM, dtype=torch.float64,
                                                        per_process=True)
    model = torch.nn.parallel.DistributedDataParallel(encoder())
    head = protomem.PrototypeMemory(32, DIM, dtype=torch.float64)
    exact = protomem.PrototypeMemory(32, DIM, dtype=torch.float64, gradient_scale=1.0)
    assert head.sharded and head.world_size == world and head.gradient_scale == world
    unscaled = torch.nn.parallel.DistributedDataParallel(encoder())
    for step in range(4):
        x, y = global_batch(step)
        rows = len(y) // world
        mine = slice(rank * rows, (rank + 1) * rows)
        reference.zero_grad()
        loss_one = one(reference(x), y)
        loss_one.backward()
        model.zero_grad()
        loss = head(model(x[mine]), y[mine])
        loss.backward()                                   # DDP averages over the processes
        assert abs(loss.item() - loss_one.item()) <= 1e-12 * abs(loss_one.item())
        for p, q in zip(model.module.parameters(), reference.parameters()):
            assert relative(p.grad, q.grad) <= 1e-10, (step, relative(p.grad, q.grad))
        unscaled.zero_grad()
        exact(unscaled(x[mine]), y[mine]).backward()
        for p, q in zip(unscaled.module.parameters(), reference.parameters()):
            assert relative(p.grad * world, q.grad) <= 1e-10, step
        with torch.no_grad():                             # the same SGD step everywhere
            for net, factor in ((reference, 1), (model.module, 1), (unscaled.module, world)):
                for p in net.parameters():
                    p -= 0.1 * factor * p.grad

    # A dtype error in the last process: the same error in every process, nothing changed.
    x, y = global_batch(10)
    rows = len(y) // world
    e = torch.randn(rows, DIM, dtype=torch.float64, requires_grad=True)
    bad = e.float() if rank == world - 1 else e
    before = head.contents()
    try:
        head(bad, y[rank * rows:(rank + 1) * rows])
        raise SystemExit("no error")
    except protomem.Error as error:
        assert f"rank {world - 1} of {world}: PrototypeMemory: embeddings must have dtype " \\
            "torch.float64" in str(error), error
    after = head.contents()
    assert all(torch.equal(u, v) for u, v in zip(before, after)) and not head.pending
    # ... and the processes are still in step: the next forward is the one-process loss.
    twin = protomem.PrototypeMemory(32, DIM, dtype=torch.float64, per_process=True)
    twin.load_state_dict(one.state_dict())
    z = torch.randn(len(y), DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = head(z[rank * rows:(rank + 1) * rows].requires_grad_(True), y[rank * rows:(rank + 1) * rows])
    assert abs(loss.item() - twin(z.requires_grad_(True), y).item()) <= 1e-12

    # Every process's rows are single exemplars; the global batch is class-grouped: accepted.
    # Classes apart in every process: refused in every process.
    grouped = torch.arange(3) + 50
    loss = head(torch.randn(3, DIM, dtype=torch.float64, requires_grad=True), grouped)
    assert head.last_step["single_exemplar_classes"] == (3 if world == 1 else 0)
    loss.backward()
    apart = torch.arange(3) + 60 + 3 * rank
    try:
        head(torch.randn(3, DIM, dtype=torch.float64, requires_grad=True), apart)
        raise SystemExit("no error")
    except protomem.Error as error:
        assert f"{3 * world} of the batch's {3 * world} classes have a single exemplar" in \\
            str(error), error
    print("ok", rank)
''')


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_gradient_parity_and_agreed_checks(tmp_path, world):
    run_worker(tmp_path, WORKER, world)
