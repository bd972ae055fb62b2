#!/usr/bin/env python3
"""insightface arcface_torch's train_v2.py, reduced to its shape, with protomem in place of
PartialFC_V2 - the recipe of docs/python.md, run by tests/python/test_arcface_style.py.

What is kept from train_v2.py: one process per rank (torchrun's RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT, or --rank / --world-size / --store), the backbone under DistributedDataParallel,
CombinedMarginLoss-style arguments (s, m1, m2, m3), the head built with PartialFC_V2's
constructor arguments, one SGD over the backbone's and the head's parameter groups, a
warm-up + polynomial learning rate, autocast with a GradScaler (--fp16), gradient accumulation
(--gradient-acc: backward after every forward, an optimizer step every N), gradient clipping, and
one checkpoint per rank (checkpoint_gpu_{rank}.pt) that --resume continues from.
What is different: protomem needs class-grouped batches (protomem.GroupedBatchSampler, K images of
each class; its state is in the checkpoint), the head has no parameters (an empty group), and the
data is protomem's synthetic identity set on the CPU (a small MLP backbone). On the CPU, autocast
runs in bfloat16 and torch disables the GradScaler (it needs CUDA), as it would on a CPU build.

    /usr/bin/python3 examples/python/arcface_torch_style.py --world-size 1 --output /tmp/arc
    torchrun --nproc_per_node 2 examples/python/arcface_torch_style.py --output /tmp/arc
"""
import argparse
import json
import os
import warnings

import torch
import torch.distributed as distributed
from torch.nn.parallel import DistributedDataParallel

import protomem


class CombinedMarginLoss(torch.nn.Module):
    """The margin object of arcface_torch's config (its losses.CombinedMarginLoss constructor):
    PartialFCCompatible reads s, m1, m2, m3 and maps them to the protomem margin of the same
    function (protomem.margin_from_insightface)."""

    def __init__(self, s, m1, m2, m3, interclass_filtering_threshold=0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    a("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    a("--store", default=None, help="a file for the gloo FileStore (default: torchrun's env://)")
    a("--output", required=True)
    a("--num-classes", type=int, default=400)
    a("--images-per-class", type=int, default=8)
    a("--batch-size", type=int, default=32, help="images per process per step (as cfg.batch_size)")
    a("--exemplars", type=int, default=4, help="K images of each class in a batch")
    a("--embedding-size", type=int, default=32)
    a("--sample-rate", type=float, default=0.25, help="memory slots = sample_rate x num_classes")
    a("--margin-list", type=float, nargs=3, default=(1.0, 0.5, 0.0), help="m1 m2 m3")
    a("--scale", type=float, default=32.0)
    a("--lr", type=float, default=0.1)
    a("--warmup-steps", type=int, default=4)
    a("--steps", type=int, default=24, help="total steps (train_v2's total_step)")
    a("--stop-after", type=int, default=0, help="stop after this many steps (0: run to --steps)")
    a("--save-every", type=int, default=6)
    a("--gradient-acc", type=int, default=2)
    a("--fp16", action="store_true", help="autocast + GradScaler (bfloat16 autocast on the CPU)")
    a("--resume", action="store_true")
    a("--seed", type=int, default=2048)
    return p.parse_args()


def main():
    cfg = parse_args()
    rank, world_size = cfg.rank, cfg.world_size
    init = "file://" + cfg.store if cfg.store else "env://"
    distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.output, exist_ok=True)

    dataset = protomem.synthetic.Faces(protomem.synthetic.IdentitySet(seed=7), cfg.num_classes,
                                       cfg.images_per_class)
    # train_v2: get_dataloader(...) with a DistributedSampler. protomem: class-grouped batches,
    # every process a different share of the same global batch.
    sampler = protomem.GroupedBatchSampler(dataset.labels, cfg.batch_size // cfg.exemplars,
                                           cfg.exemplars, seed=cfg.seed, rank=rank,
                                           world_size=world_size)
    train_loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)

    backbone = torch.nn.Sequential(
        torch.nn.Linear(dataset.data.image_dim, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Linear(64, cfg.embedding_size))
    backbone = DistributedDataParallel(backbone)
    backbone.train()

    margin_loss = CombinedMarginLoss(cfg.scale, *cfg.margin_list)
    # train_v2: PartialFC_V2(margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate,
    # cfg.fp16). The memory is sharded over the default (gloo) group.
    # gemm="eigen": the same rounding in every run, so that a resumed run equals a straight one bit
    # for bit (the default, "auto", measures the fastest GEMM in each process).
    module_partial_fc = protomem.PartialFCCompatible(
        margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate, cfg.fp16, gemm="eigen")
    module_partial_fc.train()
    opt = torch.optim.SGD(
        params=[{"params": backbone.parameters()}, {"params": module_partial_fc.parameters()}],
        lr=cfg.lr, momentum=0.9, weight_decay=5e-4)

    def polynomial_warmup(step):  # arcface_torch's PolynomialLRWarmup, power 2
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return (1 - (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)) ** 2
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, polynomial_warmup)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA")
        amp = torch.cuda.amp.GradScaler(growth_interval=100, enabled=cfg.fp16)

    global_step, losses = 0, []
    checkpoint_path = os.path.join(cfg.output, f"checkpoint_gpu_{rank}.pt")
    if cfg.resume:
        dict_checkpoint = torch.load(checkpoint_path)
        global_step = dict_checkpoint["global_step"]
        losses = dict_checkpoint["losses"]
        backbone.module.load_state_dict(dict_checkpoint["state_dict_backbone"])
        module_partial_fc.load_state_dict(dict_checkpoint["state_dict_softmax_fc"])
        opt.load_state_dict(dict_checkpoint["state_optimizer"])
        lr_scheduler.load_state_dict(dict_checkpoint["state_lr_scheduler"])
        amp.load_state_dict(dict_checkpoint["state_amp"])
        sampler.load_state_dict(dict_checkpoint["state_sampler"])
        del dict_checkpoint

    stop = cfg.stop_after or cfg.steps
    while global_step < stop:
        for img, local_labels in train_loader:
            global_step += 1
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=cfg.fp16):
                local_embeddings = backbone(img)
            loss = module_partial_fc(local_embeddings, local_labels)
            amp.scale(loss).backward()
            if global_step % cfg.gradient_acc == 0:
                amp.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
                amp.step(opt)
                amp.update()
                opt.zero_grad()
            lr_scheduler.step()
            losses.append(loss.item())
            if global_step % cfg.save_every == 0 or global_step == stop:
                torch.save({"global_step": global_step, "losses": losses,
                            "state_dict_backbone": backbone.module.state_dict(),
                            "state_dict_softmax_fc": module_partial_fc.state_dict(),
                            "state_optimizer": opt.state_dict(),
                            "state_lr_scheduler": lr_scheduler.state_dict(),
                            "state_amp": amp.state_dict(),
                            "state_sampler": sampler.state_dict()}, checkpoint_path)
            if global_step >= stop:
                break
    labels, prototypes, _ = module_partial_fc.contents()  # a collective: the whole memory
    print(json.dumps({"rank": rank, "global_step": global_step, "losses": losses,
                      "memory": module_partial_fc.stats(), "stored": labels.tolist(),
                      "prototypes": prototypes.double().sum(1).tolist()}))
    distributed.destroy_process_group()


if __name__ == "__main__":
    main()
