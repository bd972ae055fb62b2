#!/usr/bin/env python3
"""Train a face-recognition-style encoder with protomem's Python head, arcface_torch style.

The loop of insightface's arcface_torch (train_v2.py) with Prototype Memory in place of Partial FC:
an encoder, the margin-softmax head, SGD with warm-up and cosine decay, class-grouped batches from
protomem.GroupedBatchSampler through a DataLoader, a checkpoint every N steps and --resume, a
progress bar, and held-out verification (TAR at FAR 1e-3 / 1e-4) and identification (rank-1) at
the end. The data is the project's synthetic identity set (protomem.synthetic, the same C++
generator examples/train uses; docs/synthetic-data.md), so the defaults are the setup of the C++
trainer's `1e4` run in docs/results.md: 10^4 identities x 16 images, MLP 128-256-256-64 with batch
norm, CosFace s = 32, m = 0.3, M = 4096 slots, 300 steps of 32 identities x 4 images.

With --data the images of a data set are used instead (protomem.data: an insightface .rec with its
.idx, a list file or an image folder, read as examples/train reads them), held out from --heldout
(default: heldout.<ext> beside a train.<ext>): the identities with at least --eval-images images
are the verification pairs, one image of each other held-out identity a rank-1 distractor. The
encoder is the MLP on the flattened pixels or, with --encoder cnn, examples/train's small IResNet
(--width, --depth).

    /usr/bin/python3 examples/python/train.py --output /tmp/run          # about a minute, 2 cores
    /usr/bin/python3 examples/python/train.py --output /tmp/run --resume # continue a checkpoint
    /usr/bin/python3 examples/python/train.py --data set/train.rec --encoder cnn --output /tmp/img
"""
import argparse
import json
import math
import os
import sys
import time

import torch

import protomem


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--identities", type=int, default=10000, help="training identities: labels [0, N)")
    a("--images-per-identity", type=int, default=16)
    a("--eval-identities", type=int, default=1000,
      help="held-out identities [N, N + E) (--data: at most E of the held-out set's)")
    a("--eval-images", type=int, default=4, help="images per held-out identity")
    a("--distractors", type=int, default=10000,
      help="gallery distractors for rank-1 (--data: at most this many)")
    a("--steps", type=int, default=300)
    a("--batch", type=int, default=128, help="images per step (identities x exemplars)")
    a("--exemplars", type=int, default=4, help="K images per identity in a batch")
    a("--hidden", type=int, default=256)
    a("--dim", type=int, default=64, help="embedding dimension D")
    a("--capacity", type=int, default=4096, help="M memory slots")
    a("--scale", type=float, default=32.0)
    a("--margin", type=float, default=0.3, help="CosFace m")
    a("--half-life", type=float, default=8.0,
      help="aging: AgeDecay(half-life) of the stored prototypes, in steps (0: NoAging)")
    a("--queue", default="lrw", choices=("lrw", "fifo"), help="eviction order of the memory")
    a("--storage", default="float32", choices=("float32", "bfloat16", "float16"),
      help="how the memory stores its prototypes (narrow: half the memory, float32 arithmetic)")
    a("--gemm", default="auto", choices=("auto", "eigen", "blas"),
      help="the memory pass's GEMM (auto: the fastest, measured in each process; a forced one "
           "rounds the same in every run, e.g. for a resumed run that must equal a straight one)")
    a("--lr", type=float, default=0.1)
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, default=5e-4)
    a("--warmup", type=float, default=0.05, help="share of the steps with a linear warm-up")
    a("--mining", type=float, default=0.0,
      help="doppelganger fraction of each batch (0: off; e.g. 0.25 with DoppelgangerMining(8))")
    a("--data", help="train on the images of this .rec / list file / folder (protomem.data)")
    a("--heldout", help="held-out set of --data (default: heldout.<ext> beside a train.<ext>)")
    a("--image-size", type=int, default=32, help="--data: images are resized to S x S")
    a("--channels", type=int, default=1, choices=(1, 3), help="--data: 1 gray, 3 RGB")
    a("--skip-corrupt", action="store_true",
      help="--data: leave out malformed records, replace images that do not decode")
    a("--encoder", default="mlp", choices=("mlp", "cnn"), help="cnn: a small IResNet (--data)")
    a("--width", type=int, default=32, help="cnn: channels of the first stage")
    a("--depth", type=int, default=1, help="cnn: blocks per stage (three stages)")
    a("--seed", type=int, default=1)
    a("--data-seed", type=int, default=1, help="seed of the synthetic identity set")
    a("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    a("--workers", type=int, default=0, help="DataLoader workers")
    a("--output", default="train_output", help="directory for the checkpoint and results.json")
    a("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: never)")
    a("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt when it exists")
    a("--stop-after", type=int, default=0, help="stop after this many steps (0: --steps); for tests")
    a("--no-eval", action="store_true", help="skip the held-out evaluations")
    a("--no-progress", action="store_true")
    return p.parse_args(argv)


# ---- data ------------------------------------------------------------------------------------

def default_heldout(train):
    """heldout.<ext> beside train.<ext> (examples/train's rule); None for other names."""
    folder, name = os.path.split(train.rstrip("/"))
    return os.path.join(folder, "heldout" + name[5:]) if name.startswith("train") else None


class IBlock(torch.nn.Module):
    """insightface's IBasicBlock, as examples/train/image_data.hpp builds it: BN-conv3x3-BN-PReLU-
    conv3x3(stride)-BN plus the shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + (x if self.down is None else self.down(x))


def make_cnn(channels, size, width, depth, dim):
    """examples/train's make_cnn: conv3x3-BN-PReLU stem, three stages of `depth` blocks at width,
    2 width, 4 width channels, each halving the resolution, then BN-flatten-FC-BN."""
    nn = torch.nn
    layers = [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
              nn.PReLU(width)]
    cin, side = width, size
    for stage in range(3):
        cout = width << stage
        layers += [IBlock(cin if b == 0 else cout, cout, 2 if b == 0 else 1) for b in range(depth)]
        cin, side = cout, (side + 1) // 2
    layers += [nn.BatchNorm2d(cin), nn.Flatten(), nn.Linear(cin * side * side, dim),
               nn.BatchNorm1d(dim)]
    return nn.Sequential(*layers)


def make_encoder(args, image_dim):
    torch.manual_seed(args.seed)
    if args.encoder == "cnn":
        if not args.data:
            sys.exit("--encoder cnn needs --data (the synthetic images are vectors)")
        return make_cnn(args.channels, args.image_size, args.width, args.depth, args.dim)
    # Linear-BN-ReLU blocks and a BN on the embedding, as face encoders end (BN-FC-BN).
    return torch.nn.Sequential(
        *([torch.nn.Flatten()] if args.data else []),
        torch.nn.Linear(image_dim, args.hidden), torch.nn.BatchNorm1d(args.hidden), torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, args.hidden), torch.nn.BatchNorm1d(args.hidden),
        torch.nn.ReLU(), torch.nn.Linear(args.hidden, args.dim), torch.nn.BatchNorm1d(args.dim))


# ---- evaluation ------------------------------------------------------------------------------

@torch.no_grad()
def embed(encoder, images):
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([torch.nn.functional.normalize(encoder(images[i:i + 4096]), dim=1)
                     for i in range(0, len(images), 4096)])
    encoder.train(was_training)
    return out


class Evaluator:
    """Held-out identities [N, N + E) x V images; distractors [N + E, N + E + X) x 1 image."""

    def __init__(self, args, data, heldout=None):
        if heldout is not None:
            self.from_dataset(heldout, args.eval_images, args.eval_identities, args.distractors)
            return
        n, e, v = args.identities, args.eval_identities, args.eval_images
        ids = torch.arange(n, n + e).repeat_interleave(v)
        self.heldout = data.images(ids, torch.arange(v).repeat(e))
        self.v = v
        d = torch.arange(n + e, n + e + args.distractors)
        self.distractors = data.images(d, torch.zeros_like(d))

    def from_dataset(self, heldout, v, identities, distractor_limit):
        """examples/train's choice: the held-out classes in label order, those with at least V
        images first; the first E of those (E = --eval-identities, capped by their number rounded
        down to even) give V images each, the next ones (at most --distractors) their first image
        as distractors."""
        members = {}
        for i, label in enumerate(heldout.labels.tolist()):
            members.setdefault(label, []).append(i)
        order = ([m for _, m in sorted(members.items()) if len(m) >= v]
                 + [m for _, m in sorted(members.items()) if len(m) < v])
        eligible = sum(len(m) >= v for m in order)
        e = min(identities, eligible // 2 * 2)
        if e < 2:
            sys.exit(f"the held-out set has {eligible} identities with at least --eval-images {v} "
                     "images; at least 2 are needed")
        verification = [i for m in order[:e] for i in m[:v]]
        distractors = [m[0] for m in order[e:e + min(distractor_limit, len(order) - e)]]
        self.v = v
        self.heldout = torch.stack([heldout[i][0] for i in verification])
        self.distractors = torch.stack([heldout[i][0] for i in distractors]) if distractors \
            else self.heldout[:0]

    def __call__(self, encoder):
        f = embed(encoder, self.heldout)
        n, v = len(f), self.v
        sim = f @ f.t()
        ident = torch.arange(n) // v
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        same = ident[:, None] == ident[None, :]
        genuine, impostor = sim[upper & same], sim[upper & ~same]
        scores = {}
        for far in (1e-3, 1e-4):
            k = int(far * len(impostor))  # impostors allowed above the threshold
            threshold = torch.topk(impostor, k + 1).values[-1]
            scores[f"tar@{far:g}"] = float((genuine > threshold).double().mean())
        gallery = torch.cat([f[::v], embed(encoder, self.distractors)]) if len(self.distractors) \
            else f[::v]
        probes = torch.arange(n)[torch.arange(n) % v != 0]
        best = (f[probes] @ gallery.t()).argmax(1)
        scores["rank1"] = float((best == probes // v).double().mean())
        return scores


# ---- training --------------------------------------------------------------------------------

def lr_lambda(args):
    warmup = max(1, int(args.steps * args.warmup))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


class Progress:
    """tqdm when installed and on a terminal, otherwise a line every 10%."""

    def __init__(self, total, start, enabled):
        self.total, self.done, self.bar = total, start, None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, loss, images_per_s):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")
            self.bar.update(1)
        elif self.enabled and (self.done % max(1, self.total // 10) == 0 or self.done == self.total):
            print(f"step {self.done}/{self.total}  loss {loss:.4f}  {images_per_s:.0f} images/s",
                  file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def save_checkpoint(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    checkpoint_path = os.path.join(args.output, "checkpoint.pt")
    if args.batch % args.exemplars:
        sys.exit(f"--batch {args.batch} is not a multiple of --exemplars {args.exemplars}")

    heldout = None
    if args.data:
        # Images: the labels may be any non-negative integers; the head's classes are [0, max].
        options = dict(image_size=args.image_size, channels=args.channels,
                       skip_corrupt=args.skip_corrupt)
        args.heldout = args.heldout or default_heldout(args.data)
        if not args.no_eval and not args.heldout:
            sys.exit(f"--data {args.data} is not named train.*: give --heldout (or --no-eval)")
        try:
            dataset = protomem.data.open_dataset(args.data, **options)
            if not args.no_eval:
                heldout = protomem.data.open_dataset(args.heldout, **options)
        except protomem.Error as e:
            sys.exit(f"cannot read the data: {e}")
        data, classes = None, int(dataset.labels.max()) + 1
        image_dim = args.channels * args.image_size ** 2
    else:
        data = protomem.synthetic.IdentitySet(seed=args.data_seed)
        dataset = protomem.synthetic.Faces(data, args.identities, args.images_per_identity)
        classes, image_dim = args.identities, data.image_dim
    encoder = make_encoder(args, image_dim)
    mining = protomem.DoppelgangerMining(8, classes) if args.mining > 0 else None
    aging = protomem.AgeDecay(args.half_life) if args.half_life > 0 else protomem.NoAging()
    queue = protomem.FIFO() if args.queue == "fifo" else protomem.LRW()
    head = protomem.PrototypeMemory(args.capacity, args.dim,
                                    margin=protomem.CosFace(args.scale, args.margin),
                                    queue=queue, mining=mining, aging=aging, storage=args.storage,
                                    num_classes=classes, gemm=args.gemm)
    sampler = protomem.GroupedBatchSampler(dataset.labels, args.batch // args.exemplars,
                                           args.exemplars, seed=args.seed,
                                           doppelganger_fraction=args.mining,
                                           head=head if mining else None)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers)
    opt = torch.optim.SGD([{"params": encoder.parameters()}, {"params": head.parameters()}],
                          lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args))

    step, losses, train_seconds = 0, [], 0.0
    if args.resume and os.path.exists(checkpoint_path):
        ckpt = torch.load(checkpoint_path)
        encoder.load_state_dict(ckpt["state_dict_backbone"])
        head.load_state_dict(ckpt["state_dict_softmax_fc"])
        opt.load_state_dict(ckpt["state_optimizer"])
        scheduler.load_state_dict(ckpt["state_lr_scheduler"])
        sampler.load_state_dict(ckpt["state_sampler"])
        step, losses, train_seconds = ckpt["global_step"], ckpt["losses"], ckpt["train_seconds"]
        print(f"resumed from {checkpoint_path} at step {step}", file=sys.stderr)

    evaluator = None if args.no_eval else Evaluator(args, data, heldout)
    results = {"args": vars(args)}
    if args.data:
        results["data"] = {"train_images": len(dataset), "train_identities": dataset.num_classes,
                           "skipped": dataset.skipped}
        if evaluator is not None:
            results["data"].update(heldout_identities=heldout.num_classes,
                                   verification_identities=len(evaluator.heldout) // evaluator.v,
                                   distractors=len(evaluator.distractors),
                                   heldout_skipped=heldout.skipped)
    if evaluator is not None and step == 0:
        results["untrained"] = evaluator(encoder)
        print("untrained encoder: " + json.dumps(results["untrained"]), file=sys.stderr)

    stop = min(args.steps, args.stop_after) if args.stop_after else args.steps
    progress = Progress(args.steps, step, not args.no_progress)
    encoder.train()
    head.train()
    while step < stop:
        for images, labels in loader:
            start = time.perf_counter()
            loss = head(encoder(images), labels)
            opt.zero_grad()
            loss.backward()  # dL/dE into the encoder; commits the memory update
            opt.step()
            scheduler.step()
            train_seconds += time.perf_counter() - start
            value = loss.item()
            if not math.isfinite(value):
                sys.exit(f"the loss is not finite at step {step + 1} (try a smaller --lr)")
            losses.append(value)
            step += 1
            progress.update(value, step * args.batch / max(train_seconds, 1e-9))
            if args.checkpoint_every and (step % args.checkpoint_every == 0 or step == args.steps):
                save_checkpoint(checkpoint_path, {
                    "global_step": step,
                    "state_dict_backbone": encoder.state_dict(),
                    "state_dict_softmax_fc": head.state_dict(),
                    "state_optimizer": opt.state_dict(),
                    "state_lr_scheduler": scheduler.state_dict(),
                    # with workers the loader has drawn batches ahead: record the steps trained
                    "state_sampler": sampler.state_dict(position=step),
                    "losses": losses,
                    "train_seconds": train_seconds,
                })
            if step >= stop:
                break
    progress.close()

    results["steps"] = step
    results["final_loss"] = sum(losses[-20:]) / max(1, len(losses[-20:]))
    results["step_ms"] = 1000.0 * train_seconds / max(1, len(losses))
    results["memory"] = {"stored": head.size, **head.stats()}
    if evaluator is not None and step == args.steps:
        results["final"] = evaluator(encoder)
        print("trained encoder:   " + json.dumps(results["final"]), file=sys.stderr)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "args"}))
    return results


if __name__ == "__main__":
    main()
