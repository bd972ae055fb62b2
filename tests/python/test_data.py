"""protomem.data: RecordIO pairs written here byte by byte from the documented format (not with the
module under test), list files and image folders read back - labels, pixels against Pillow's own
decode of the same bytes, the resize rule against hand-computed weights - every malformed input
raising protomem.Error with its message, the skip option, and GroupedBatchSampler over `.labels`
through a DataLoader."""
import io
import os
import struct

import pytest
import torch
from PIL import Image

import protomem
from protomem.data import ImageListDataset, RecordIODataset, open_dataset

MAGIC = 0xCED7230A


# ---- a RecordIO writer, from the format (recordio.hpp / docs/data.md) ----------------------------

def frame(payload):
    """The bytes of one record: split where the magic number sits at a 4-aligned payload offset."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    pieces, start = [], 0
    for i in cuts:
        pieces.append(payload[start:i])
        start = i + 4
    pieces.append(payload[start:])
    out = b""
    for k, piece in enumerate(pieces):
        cflag = 0 if len(pieces) == 1 else 1 if k == 0 else 3 if k == len(pieces) - 1 else 2
        out += struct.pack("<II", MAGIC, cflag << 29 | len(piece)) + piece
        out += b"\0" * (-len(piece) % 4)
    return out


def image_record(label, image, extra=(), id1=0, id2=0):
    return (struct.pack("<IfQQ", len(extra), label, id1, id2)
            + b"".join(struct.pack("<f", x) for x in extra) + image)


def write_rec(path, records):
    """records: (key, payload bytes or raw frame bytes via ("raw", bytes)) in file order."""
    rec, idx = bytearray(), []
    for key, payload in records:
        idx.append(f"{key}\t{len(rec)}\n")
        rec += payload[1] if isinstance(payload, tuple) else frame(payload)
    with open(path, "wb") as f:
        f.write(rec)
    with open(os.path.splitext(path)[0] + ".idx", "w") as f:
        f.write("".join(idx))
    return str(path)


def png(array, mode):
    buf = io.BytesIO()
    Image.fromarray(array.numpy(), mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array, mode, quality=90):
    buf = io.BytesIO()
    Image.fromarray(array.numpy(), mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def gray(seed, h=12, w=10):
    return torch.randint(0, 256, (h, w), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def rgb(seed, h=12, w=10):
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def pillow_pixels(data, mode):
    """Pillow's decode of the same bytes (independent of the module), H x W x C uint8."""
    import numpy as np
    img = Image.open(io.BytesIO(data))
    if mode == "L" and img.format == "JPEG" and img.mode != "L":
        img.draft("L", img.size)
    a = torch.from_numpy(np.array(img.convert(mode)))
    return a[..., None] if a.dim() == 2 else a


@pytest.fixture
def face_set(tmp_path):
    """insightface's layout: header record 0, images 1..7, identity records 8..10."""
    images = {  # key: (label, bytes, extra labels, id1, id2)
        1: (0, png(gray(1), "L"), (), 0, 0),
        2: (0, jpeg(gray(2), "L"), (), 0, 0),
        # the magic number at payload offsets 8 and 12 (the id field): three parts, one empty
        3: (1, png(gray(3), "L"), (), MAGIC | MAGIC << 32, 0),
        4: (1, jpeg(rgb(4), "RGB"), (), 0, MAGIC << 32),
        # flag > 0: the label is the first extra label, not the (different) label field
        5: (99, png(gray(5), "L"), (2.0, 7.0), 0, 0),
        6: (2, png(gray(6), "L"), (), 0, 0),
        7: (2, jpeg(gray(7), "L"), (), 0, 0),
    }
    records = [(0, image_record(0, b"", (8.0, 11.0)))]
    for key, (label, data, extra, id1, id2) in images.items():
        records.append((key, image_record(label, data, extra, id1, id2)))
    for label, (a, b) in enumerate([(1, 3), (3, 5), (5, 8)]):
        records.append((8 + label, image_record(0, b"", (float(a), float(b)))))
    path = write_rec(tmp_path / "train.rec", records)
    return path, images


def test_split_records_are_written_split(face_set):
    path, _ = face_set
    raw = open(path, "rb").read()
    flags = []
    offset = 0
    while offset < len(raw):
        magic, lrecord = struct.unpack_from("<II", raw, offset)
        assert magic == MAGIC
        flags.append(lrecord >> 29)
        offset += 8 + (lrecord & (1 << 29) - 1) + (-(lrecord & (1 << 29) - 1) % 4)
    assert flags.count(1) == 2 and flags.count(2) == 1 and flags.count(3) == 2


def test_recordio_labels_and_pixels(face_set):
    path, images = face_set
    ds = RecordIODataset(path, normalize=False)
    assert ds.keys == [1, 2, 3, 4, 5, 6, 7]  # header and identity records are not samples
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert ds.num_classes == 3 and len(ds) == 7 and ds.skipped == 0
    for i, key in enumerate(ds.keys):
        x, label = ds[i]
        assert label == ds.labels[i]
        data = images[key][1]
        assert x.dtype == torch.uint8 and x.shape == (1, 12, 10)
        if data.startswith(b"\x89PNG"):
            assert torch.equal(x[0], gray(key)), key  # PNG: the pixels written, exactly
        assert torch.equal(x.permute(1, 2, 0), pillow_pixels(data, "L")), key
    x, _ = RecordIODataset(path, channels=3, normalize=False)[3]  # the RGB JPEG
    assert x.shape == (3, 12, 10)
    assert torch.equal(x.permute(1, 2, 0), pillow_pixels(images[4][1], "RGB"))
    x, _ = RecordIODataset(path, channels=3, normalize=False)[0]  # gray PNG -> RGB repeats it
    assert torch.equal(x, gray(1).expand(3, 12, 10))


def test_normalized_items_and_transform(face_set):
    path, _ = face_set
    x, label = RecordIODataset(path)[0]
    assert x.dtype == torch.float32 and label == 0
    assert torch.equal(x[0], ((gray(1).double() - 127.5) / 128).float())  # exact in float32
    x, _ = RecordIODataset(path, transform=lambda t: t * 2)[0]
    assert torch.equal(x[0], ((gray(1).double() - 127.5) / 128 * 2).float())


def triangle(n_in, n_out):
    """Per output sample, [(source index, weight)]: decode.hpp's rule as its comment states it - a
    triangle of half-width max(1, n_in / n_out) source pixels centred on the output pixel's
    centre, normalised over the source pixels inside the image."""
    scale = n_in / n_out
    support = max(1.0, scale)
    out = []
    for i in range(n_out):
        centre = (i + 0.5) * scale
        taps = [(j, max(0.0, 1 - abs(j + 0.5 - centre) / support)) for j in range(n_in)]
        taps = [(j, w) for j, w in taps if w > 0]
        total = sum(w for _, w in taps)
        out.append([(j, w / total) for j, w in taps])
    return out


def reference_resize(img, height, width):
    """Rows first then columns, in double precision, rounded once at the end (half up)."""
    h, w = img.shape
    tx, ty = triangle(w, width), triangle(h, height)
    rows = [[sum(wt * float(img[y, j]) for j, wt in tx[x]) for x in range(width)] for y in range(h)]
    out = [[sum(wt * rows[j][x] for j, wt in ty[y]) for x in range(width)] for y in range(height)]
    return torch.tensor([[min(255, max(0, int(v + 0.5))) for v in r] for r in out],
                        dtype=torch.uint8)


def test_resize_follows_the_cpp_rule(tmp_path):
    # Shrinking 8 -> 4 (scale 2): the triangle of half-width 2 gives interior weights
    # (1, 3, 3, 1) / 8 over source pixels 2i-1 .. 2i+2; at the edges the taps outside the image
    # are dropped and the rest renormalised: (3, 3, 1) / 7.
    row = torch.tensor([0, 40, 80, 120, 160, 200, 240, 250], dtype=torch.float64)
    w_in = [(1, 3, 3, 1)] * 4
    expect = []
    for i in range(4):
        taps = [(j, w) for j, w in zip(range(2 * i - 1, 2 * i + 3), w_in[i]) if 0 <= j < 8]
        expect.append(sum(w * row[j] for j, w in taps) / sum(w for _, w in taps))
    expect = torch.floor(torch.stack(expect) + 0.5).to(torch.uint8)
    img = row.to(torch.uint8).repeat(3, 1)  # 3 x 8, constant columns: height 3 -> 3 unchanged
    path = write_rec(tmp_path / "r.rec", [(0, image_record(0, png(img, "L")))])
    x, _ = RecordIODataset(path, image_size=(3, 4), normalize=False)[0]
    assert x.shape == (1, 3, 4)
    assert torch.equal(x[0, 1], expect), (x[0, 1], expect)
    # any size: within one grey level of Pillow's BILINEAR (the same filter, rounded twice)
    src = gray(11, 37, 23)
    path = write_rec(tmp_path / "s.rec", [(0, image_record(0, png(src, "L")))])
    for size in [(16, 16), (40, 50), (5, 7)]:
        x, _ = RecordIODataset(path, image_size=size, normalize=False)[0]
        ref = torch.from_numpy(__import__("numpy").array(
            Image.fromarray(src.numpy(), "L").resize(size[::-1], Image.BILINEAR)))
        assert (x[0].int() - ref.int()).abs().max() <= 1, size
        assert torch.equal(x[0], reference_resize(src, *size)), size
    x, _ = RecordIODataset(path, image_size=(37, 23), normalize=False)[0]  # same size: unchanged
    assert torch.equal(x[0], src)


def test_plain_rec_without_header_record(tmp_path):
    # record 0 with flag 0 is an image; every .idx entry is one, in .idx order
    path = write_rec(tmp_path / "plain.rec", [(5, image_record(3, png(gray(5), "L"))),
                                               (0, image_record(1, png(gray(0), "L"))),
                                               (9, image_record(3, png(gray(9), "L")))])
    ds = RecordIODataset(path, normalize=False)
    assert ds.keys == [5, 0, 9] and ds.labels.tolist() == [3, 1, 3] and ds.num_classes == 2
    assert torch.equal(ds[2][0][0], gray(9))


def test_list_file_and_folder(tmp_path):
    folder = tmp_path / "faces"
    names = {"bob": [gray(20), gray(21)], "alice": [gray(22)], "carol x": [gray(23), gray(24)]}
    lines = ["# comment", ""]
    for name, imgs in names.items():
        (folder / name).mkdir(parents=True)
        for k, img in enumerate(imgs):
            ext = ".PNG" if k else ".png"
            (folder / name / f"{k}{ext}").write_bytes(png(img, "L"))
            lines.append(f"faces/{name}/{k}{ext}\t {len(lines)}")
        (folder / name / "notes.txt").write_text("not an image")
    (tmp_path / "train.txt").write_text("\r\n".join(lines) + "\r\n")

    ds = ImageListDataset(folder, normalize=False)  # subfolders in name order: labels 0, 1, 2
    assert ds.identity_names == ["alice", "bob", "carol x"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 2] and ds.num_classes == 3
    order = [gray(22), gray(20), gray(21), gray(23), gray(24)]
    for i, img in enumerate(order):
        assert torch.equal(ds[i][0][0], img)

    ds = open_dataset(tmp_path / "train.txt", normalize=False)
    assert isinstance(ds, ImageListDataset)
    assert ds.labels.tolist() == [2, 3, 4, 5, 6]  # the line numbers written above
    assert torch.equal(ds[4][0][0], gray(24))
    assert ds.paths[4] == os.path.join(str(tmp_path), "faces/carol x/1.PNG")
    assert isinstance(open_dataset(folder), ImageListDataset)


def error(fn, *parts):
    with pytest.raises(protomem.Error) as e:
        fn()
    for part in parts:
        assert part in str(e.value), (part, str(e.value))
    return str(e.value)


def good(label=0, seed=0):
    return image_record(label, png(gray(seed), "L"))


@pytest.mark.parametrize("name, records, parts", [
    ("bad magic", [(0, good()), (1, ("raw", struct.pack("<II", 0x12345678, 24) + good()[:24]))],
     ["record 1 (offset ", "bad magic number 0x12345678 (expected 0xced7230a)"]),
    ("truncated", [(0, good()), (1, ("raw", struct.pack("<II", MAGIC, 1000) + b"\0" * 40))],
     ["record 1", "length 1000 runs past the end of the file"]),
    ("bad flag", [(0, good()), (1, ("raw", struct.pack("<II", MAGIC, 2 << 29 | 24) + good()[:24]))],
     ["record 1", "part 0 has continuation flag 2 (a record starts with 0 or 1)"]),
    ("broken split", [(0, ("raw", struct.pack("<II", MAGIC, 1 << 29 | 4) + b"abcd"
                           + struct.pack("<II", MAGIC, 0 << 29 | 4) + b"efgh"))],
     ["record 0 (offset 0, part at offset 12)",
      "part 1 has continuation flag 0 (expected 2 or 3)"]),
    ("short header", [(0, good()), (1, b"\1\0\0\0abcdefgh")],
     ["record 1", "payload of 12 bytes is shorter than the 24-byte image header"]),
    ("extra labels", [(0, good()), (1, struct.pack("<IfQQ", 40, 0, 0, 0) + b"\0" * 8)],
     ["record 1", "header announces 40 extra labels (160 bytes) but only 8 bytes follow"]),
    ("negative label", [(0, good()), (1, good(-3))],
     ["record 1", "label -3 is not a non-negative integer"]),
    ("fractional label", [(0, good()), (1, image_record(0, png(gray(1), "L"), (2.5,)))],
     ["record 1", "label 2.5 is not a non-negative integer"]),
    ("no image", [(0, good()), (1, image_record(1, b""))], ["record 1", "holds no image bytes"]),
    ("header labels", [(0, image_record(0, b"", (0.0, 3.0))), (1, good())],
     ["record 0", "header record's labels must be (first identity record, end)"]),
])
def test_malformed_records(tmp_path, name, records, parts):
    path = write_rec(tmp_path / "bad.rec", records)
    error(lambda: RecordIODataset(path), "bad.rec", *parts)


def test_malformed_index_and_missing_files(tmp_path):
    path = write_rec(tmp_path / "a.rec", [(0, good()), (1, good(1))])
    idx = tmp_path / "a.idx"
    idx.write_text("0\t0\nkey one\n")
    error(lambda: RecordIODataset(path), "a.idx:2: expected '<key>\\t<offset>' but found 'key one'")
    idx.write_text("0\t0\n0\t0\n")
    error(lambda: RecordIODataset(path), "a.idx:2: key 0 appears twice")
    idx.write_text("0\t0\n1\t99999\n")
    error(lambda: RecordIODataset(path), "a.idx:2: record 1 at offset 99999 is past the end of")
    idx.write_text("0\t0\n")
    idx_header = write_rec(tmp_path / "h.rec", [(0, image_record(0, b"", (3.0, 3.0))), (1, good())])
    error(lambda: RecordIODataset(idx_header), "h.idx' lacks record 2, an image")
    error(lambda: RecordIODataset(tmp_path / "none.rec"), "cannot open '", "none.rec")
    os.remove(idx)
    error(lambda: RecordIODataset(path), "RecordIO index: cannot open '", "a.idx")
    error(lambda: ImageListDataset(tmp_path / "none.txt"), "none.txt")
    (tmp_path / "l.txt").write_text("x.png 0\nonlyonefield\n")
    error(lambda: ImageListDataset(tmp_path / "l.txt"), "l.txt:2: expected '<path> <label>'")
    (tmp_path / "l.txt").write_text("x.png -1\n")
    error(lambda: ImageListDataset(tmp_path / "l.txt"), "l.txt:1: label '-1' is negative")
    (tmp_path / "l.txt").write_text("x.png 1a\n")
    error(lambda: ImageListDataset(tmp_path / "l.txt"), "l.txt:1: label '1a' is not a non-negative")
    (tmp_path / "l.txt").write_text("# nothing\n")
    error(lambda: ImageListDataset(tmp_path / "l.txt"), "holds no samples")
    (tmp_path / "empty").mkdir()
    error(lambda: ImageListDataset(tmp_path / "empty"), "image folder", "holds no image")
    # a listed file that is missing raises when read, naming the line's sample and the file
    (tmp_path / "l.txt").write_text("x.png 1\n")
    ds = ImageListDataset(tmp_path / "l.txt")
    error(lambda: ds[0], "sample 0 of list", "cannot open '", "x.png")


def test_undecodable_images(tmp_path):
    data = jpeg(gray(1), "L")
    path = write_rec(tmp_path / "u.rec", [(0, good(0, 0)),
                                          (1, image_record(0, data[:len(data) // 2])),
                                          (2, image_record(0, b"GIF89a" + b"\0" * 30)),
                                          (3, image_record(1, b"\x89PNG\r\n\x1a\n" + b"\0" * 20))])
    ds = RecordIODataset(path)  # opening reads headers only: all four are samples
    assert ds.labels.tolist() == [0, 0, 0, 1]
    error(lambda: ds[1], "u.rec' record 1 (offset ", "cannot decode JPEG (")
    error(lambda: ds[2], "u.rec' record 2", "not a JPEG or PNG image (36 bytes, starting GIF89a")
    error(lambda: ds[3], "u.rec' record 3", "cannot decode PNG (28 bytes)")
    with pytest.raises(IndexError):
        ds[4]


def test_skip_corrupt(tmp_path):
    records = [(0, good(0, 0)),
               (1, ("raw", struct.pack("<II", 0xDEADBEEF, 24) + good()[:24])),  # bad frame
               (2, good(1, 2)),
               (3, image_record(0, b"\xff\xd8\xff broken")),                     # does not decode
               (4, image_record(1, b"")),                                        # no image bytes
               (5, good(0, 5)),
               (6, image_record(2, b"\xff\xd8\xff broken"))]                     # class 2: none
    path = write_rec(tmp_path / "s.rec", records)
    error(lambda: RecordIODataset(path), "record 1", "bad magic")
    ds = RecordIODataset(path, skip_corrupt=True, normalize=False)
    assert ds.skipped == 2 and ds.keys == [0, 2, 3, 5, 6]
    assert ds.labels.tolist() == [0, 1, 0, 0, 2]
    x, label = ds[2]  # record 3: replaced by the next sample of class 0 that decodes (record 5)
    assert label == 0 and torch.equal(x[0], gray(5)) and ds.substituted == 1
    error(lambda: ds[4], "record 6", "no sample of class 2 decodes")
    # record 0 is read to tell a header record: corrupt, it is fatal (as in the C++ reader)
    bad_zero = write_rec(tmp_path / "z.rec", [(0, ("raw", struct.pack("<II", 1, 0))), (1, good())])
    error(lambda: RecordIODataset(bad_zero, skip_corrupt=True), "record 0", "bad magic")
    bad_only = write_rec(tmp_path / "b.rec", [(1, ("raw", struct.pack("<II", 1, 0)))])
    error(lambda: RecordIODataset(bad_only, skip_corrupt=True),
          "holds no readable image record (every one was corrupt and skipped)")


def test_grouped_batches_through_a_dataloader(tmp_path):
    records, key = [], 0
    for label in range(6):
        for k in range(3 + label % 2):
            records.append((key, image_record(label, png(gray(100 + key, 8, 8), "L"))))
            key += 1
    path = write_rec(tmp_path / "g.rec", records)
    ds = RecordIODataset(path, normalize=False)
    sampler = protomem.GroupedBatchSampler(ds.labels, 3, 2, seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2)
    batches = 0
    for images, labels in loader:
        batches += 1
        assert images.shape == (6, 1, 8, 8) and labels.dtype == torch.int64
        assert labels.view(3, 2).eq(labels.view(3, 2)[:, :1]).all()  # K = 2 per class, in turn
        for img, label in zip(images, labels):
            # the image is one of its class's, written with seed 100 + key
            keys = [i for i, l in enumerate(ds.labels.tolist()) if l == label]
            assert any(torch.equal(img[0], gray(100 + k, 8, 8)) for k in keys)
    assert batches == len(sampler) > 0


def test_pickles_for_workers(face_set):
    import pickle
    path, _ = face_set
    ds = RecordIODataset(path, normalize=False)
    ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[6][0], ds[6][0]) and copy.labels.tolist() == ds.labels.tolist()


def test_tiny_image_set_matches_its_lists(tmp_path):
    """examples/train/tiny_image_set.py's RecordIO (written by scripts/make-hangul-set's writer)
    reads as its list files and folder: labels and pixels."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "examples", "train", "tiny_image_set.py")
    subprocess.run([sys.executable, script, str(tmp_path), "--identities", "5", "--images", "3",
                    "--heldout", "2", "--heldout-images", "2"], check=True)
    rec = RecordIODataset(tmp_path / "train.rec", normalize=False)
    lst = ImageListDataset(tmp_path / "train.txt", normalize=False)
    folder = ImageListDataset(tmp_path / "folder" / "train", normalize=False)
    assert rec.labels.tolist() == lst.labels.tolist() == folder.labels.tolist()
    assert rec.labels.tolist() == [c for c in range(5) for _ in range(3)]
    for i in range(len(rec)):
        assert torch.equal(rec[i][0], lst[i][0]) and torch.equal(rec[i][0], folder[i][0])
    assert RecordIODataset(tmp_path / "heldout.rec").labels.tolist() == [0, 0, 1, 1]


# ---- bounds: hostile images, paths and sizes (the C++ reader's, docs/reliability.md) -----------

def png_claiming(width, height):
    """A PNG whose IHDR claims width x height 8-bit gray pixels, with an empty zlib stream."""
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01") + chunk(b"IEND", b""))


def jpeg_claiming(width, height):
    """Pillow's 8 x 8 JPEG with its SOF0 frame header patched to claim width x height."""
    data = bytearray(jpeg(gray(3)[:8, :8].contiguous(), "L"))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_scans(scans):
    """A progressive 8 x 8 gray JPEG of `scans` identical DC scans (as image_bombs.hpp builds)."""
    head = (b"\xff\xd8" + b"\xff\xdb\x00\x43\x00" + b"\x01" * 64
            + b"\xff\xc2\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"
            + b"\xff\xc4\x00\x14\x00\x01" + b"\x00" * 15 + b"\x00")
    return head + (b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + b"\x7f") * scans + b"\xff\xd9"


def test_a_header_over_the_pixel_limit_raises_before_decoding():
    import time
    from protomem.data import decode_image
    for bomb in (png_claiming(5000, 5000), jpeg_claiming(5000, 5000)):
        assert len(bomb) < 1000
        error(lambda: decode_image(bomb, 1, "'b.rec' record 7"), "'b.rec' record 7",
              "header claims 5000 x 5000 = 25000000 pixels, more than the limit of 16777216")
    for bomb in (png_claiming(65000, 65000), jpeg_claiming(65000, 65000)):
        start = time.monotonic()
        error(lambda: decode_image(bomb, 3, "'b.rec' record 7"), "'b.rec' record 7", "pixels")
        assert time.monotonic() - start < 1.0
    small = jpeg_claiming(8, 8)
    error(lambda: decode_image(small, 1, "s", max_pixels=63), "8 x 8 = 64 pixels")
    assert decode_image(small, 1, "s", max_pixels=64).shape == (8, 8, 1)


def test_a_jpeg_over_the_scan_limit_raises():
    from protomem.data import decode_image
    x = decode_image(jpeg_with_scans(100), 1, "ok")
    assert x.shape == (8, 8, 1) and bool((x == x[0, 0, 0]).all())
    error(lambda: decode_image(jpeg_with_scans(101), 1, "'b.rec' record 7"), "'b.rec' record 7",
          "more than 100 scans")
    error(lambda: decode_image(jpeg_with_scans(20), 1, "s", max_jpeg_scans=10),
          "more than 10 scans")


def test_an_image_over_a_limit_is_skipped_like_a_corrupt_one(tmp_path):
    path = write_rec(tmp_path / "b.rec", [(0, image_record(0, png_claiming(65000, 65000))),
                                          (1, image_record(0, jpeg_with_scans(200))),
                                          (2, good(0, 2))])
    strict = RecordIODataset(path, normalize=False)
    error(lambda: strict[0], "b.rec' record 0", "pixels")
    error(lambda: strict[1], "b.rec' record 1", "more than 100 scans")
    lenient = RecordIODataset(path, normalize=False, skip_corrupt=True)
    for index in (0, 1):
        x, label = lenient[index]
        assert label == 0 and torch.equal(x[0], gray(2))
    assert lenient.substituted == 2
    error(lambda: RecordIODataset(path, max_pixels=0), "max_pixels = 0")
    error(lambda: RecordIODataset(path, normalize=False, max_pixels=15)[2],
          "more than the limit of 15")


def test_a_path_that_is_not_a_regular_file_raises_at_once(tmp_path):
    import signal
    import socket
    signal.alarm(20)  # a FIFO that blocked would hang the test: fail it instead
    try:
        (tmp_path / "good.png").write_bytes(png(gray(1), "L"))
        os.mkfifo(tmp_path / "fifo.png")
        (tmp_path / "folder.png").mkdir()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "socket.png"))
        (tmp_path / "l.txt").write_text(
            "good.png 0\nfolder.png 0\nfifo.png 1\n/dev/zero 1\nsocket.png 2\n")
        ds = ImageListDataset(tmp_path / "l.txt", normalize=False)
        assert torch.equal(ds[0][0][0], gray(1))
        error(lambda: ds.pixels(1), "sample 1 of list", "is a directory, not a regular file")
        error(lambda: ds.pixels(2), "is a FIFO, not a regular file")
        error(lambda: ds.pixels(3), "'/dev/zero' is a character device, not a regular file")
        error(lambda: ds.pixels(4), "is a socket, not a regular file")
        sock.close()
        error(lambda: ImageListDataset(tmp_path / "fifo.png"), "dataset list: ", "is a FIFO")
        path = write_rec(tmp_path / "r.rec", [(0, good())])
        os.rename(tmp_path / "r.idx", tmp_path / "r.idx.real")
        os.mkfifo(tmp_path / "r.idx")
        error(lambda: RecordIODataset(path), "RecordIO index: ", "r.idx' is a FIFO")
        error(lambda: RecordIODataset("/dev/zero", idx_path=tmp_path / "r.idx.real"),
              "'/dev/zero' is a character device")
        (tmp_path / "faces" / "a").mkdir(parents=True)
        os.mkfifo(tmp_path / "faces" / "a" / "x.png")
        error(lambda: ImageListDataset(tmp_path / "faces"), "holds no image")
    finally:
        signal.alarm(0)


def test_an_image_file_over_max_image_bytes_raises_before_it_is_read(tmp_path):
    data = png(gray(1), "L")
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "l.txt").write_text("a.png 0\n")
    tight = ImageListDataset(tmp_path / "l.txt", max_image_bytes=len(data) - 1)
    error(lambda: tight[0], f"holds {len(data)} bytes, more than the limit of {len(data) - 1} "
                            "(max_image_bytes)")
    assert ImageListDataset(tmp_path / "l.txt", max_image_bytes=len(data))[0][1] == 0


def test_paths_in_messages_are_escaped(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"a\x1b[31mb\xff.png 0\n")
    ds = ImageListDataset(tmp_path / "l.txt")
    with pytest.raises(protomem.Error) as e:
        ds[0]
    assert "a\\x1b[31mb\\xff.png" in str(e.value) and "\x1b" not in str(e.value)
    assert "a\\x1b[31mb\\xff.png' (sample 0" in ds.describe(0)
