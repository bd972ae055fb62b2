#!/usr/bin/python3
"""A tiny image identity set for examples/train's smoke tests, needing no fonts: identity c is a
random polygon (its vertices fixed by c), each image of it the polygon jittered, shifted and
drawn at a random grey level, as 32x32 grayscale PNG. Written as train.rec/.idx and
heldout.rec/.idx (insightface's layout, by scripts/make-hangul-set's writer) and as list files
train.txt/heldout.txt over an image folder.

usage: tiny_image_set.py OUT_DIR [--identities 40] [--images 8] [--heldout 24] [--heldout-images 4]
"""
import argparse
import importlib.machinery
import io
import os
import random

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
writer = importlib.machinery.SourceFileLoader(
    "make_hangul_set", os.path.join(HERE, "..", "..", "scripts", "make-hangul-set")).load_module()


def draw(shape, rng, size=32):
    img = Image.new("L", (size, size), 0)
    dx, dy = rng.uniform(-2, 2), rng.uniform(-2, 2)
    points = [(x * size + dx + rng.uniform(-1, 1), y * size + dy + rng.uniform(-1, 1)) for x, y in shape]
    ImageDraw.Draw(img).polygon(points, fill=rng.randint(160, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--heldout-images", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    for name, identities, per in (("train", a.identities, a.images), ("heldout", a.heldout, a.heldout_images)):
        shapes = [[(rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)) for _ in range(5)] for _ in range(identities)]
        rendered = [[draw(s, rng) for _ in range(per)] for s in shapes]
        writer.write_set(os.path.join(a.out, name), shapes, lambda label: rendered[label])
        with open(os.path.join(a.out, name + ".txt"), "w") as lst:
            for label, images in enumerate(rendered):
                folder = os.path.join(a.out, "folder", name, "%03d" % label)
                os.makedirs(folder, exist_ok=True)
                for k, data in enumerate(images):
                    with open(os.path.join(folder, "%02d.png" % k), "wb") as f:
                        f.write(data)
                    lst.write("folder/%s/%03d/%02d.png %d\n" % (name, label, k, label))


if __name__ == "__main__":
    main()
