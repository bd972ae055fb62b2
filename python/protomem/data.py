"""Image identity data sets for PyTorch, read as the C++ reader reads them (include/protomem/data/,
docs/data.md): an insightface RecordIO pair (train.rec + train.idx), a list file (``<path> <label>``
per line) or an image folder (one subfolder per identity), JPEG or PNG images.

    train = protomem.data.open_dataset("faces/train.rec", image_size=112, channels=3)
    sampler = protomem.GroupedBatchSampler(train.labels, 64, 4, seed=1)
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, num_workers=4)

Pure Python: the records are parsed here, the images decoded by Pillow and resized by the C++
loader's rule (below); nothing needs the compiled extension except ``protomem.Error``.

Requires: Pillow >= 8 (``protomem[data]``); a readable .rec with its .idx (same name), list file or folder.
Guarantees: the samples, their order and their labels are the C++ sources' (RecordIOSource,
ListSource, FolderSource): sample i here is sample i there. An item is ``(image, label)``: the image
a float32 tensor C x H x W scaled as examples/train feeds its encoder, (pixel - 127.5) / 128, or
with ``normalize=False`` the uint8 pixels the C++ ImageLoader returns (C x H x W instead of its
H x W x C); the label an int. Every malformed input - a missing file, a malformed .idx or list
line, a bad record frame (magic number, continuation flag, length past the end), a bad image
header or label, an image that does not decode - raises ``protomem.Error`` naming the file and the
record (key, byte offset) or line, never another exception.

Pixels against the C++ decoder (protomem/data/decode.hpp): both decode JPEG with libjpeg and ask
it for the same output (grayscale: libjpeg's Y channel, which Pillow's ``draft("L")`` selects;
RGB: libjpeg's YCbCr -> RGB), and 8-bit gray and RGB PNG pixels are the file's, so for JPEG and
for gray or RGB PNG (read as gray -> gray, gray -> RGB, RGB -> RGB) the pixels are the same bytes,
resized or not: resizing is the C++ loader's rule - a separable triangle (bilinear) filter whose
support widens by the shrink factor, rows first, in float64, each output summed over its taps in
the C++ order and rounded half away from zero once at the end (Pillow's own BILINEAR is the same
filter but rounds between its two passes and uses fixed-point weights, up to a grey level off, so
it is not used). Some PNG conversions are not identical: a colour PNG read as grayscale, a PNG
with alpha (composited onto black) and a 16-bit gray PNG (whose samples libpng takes as linear
light) are converted here in linear light in float64 (sRGB -> linear, Y = 0.2126 R + 0.7152 G +
0.0722 B, x alpha, -> sRGB), while libpng's simplified API goes through fixed-point and 8-bit
linear tables, so those pixels can differ by several grey levels (most in dark pixels); a 16-bit
RGB PNG Pillow reduces to 8 bits itself. Corrupt JPEG data that libjpeg decodes with a warning
(the C++ decoder makes any warning an error) Pillow decodes without one, so such an image decodes
here; a truncated JPEG raises in both (unless ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set).
Face sets are JPEG, and the sets scripts/make-hangul-set writes are gray PNG or JPEG.

Bounds, as the C++ reader's (docs/reliability.md): an image whose header claims more than
``max_pixels`` pixels (default MAX_PIXELS = 2^24, the C++ DecodeLimits::max_pixels) raises before
Pillow decodes it (Pillow reads the header lazily; its own MAX_IMAGE_PIXELS guard is 5x larger and
only warns below 2x); a JPEG with more than ``max_jpeg_scans`` scans (default 100, counted from its
SOS markers, an embedded thumbnail's included) raises too; both count as an undecodable image for
skip_corrupt. Every file read - .rec, .idx, list file, image - must be a regular file (a
directory, device, FIFO or socket raises at once, nothing blocks), read up to its stat() size; a
list or folder image larger than ``max_image_bytes`` (default 64 MiB) raises before it is read.
Paths in messages are escaped as file text is.
"""
import bisect
import math
import os
import stat
import struct

import torch

from ._C import Error

__all__ = ["RecordIODataset", "ImageListDataset", "open_dataset", "RECORD_MAGIC", "MAX_PIXELS",
           "MAX_JPEG_SCANS", "MAX_IMAGE_BYTES"]

#: The record magic number (MXNet's kMagic).
RECORD_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
_HEADER = struct.Struct("<IfQQ")  # MXNet's IRHeader: flag, label, id, id2 (24 bytes)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: The most pixels an image header may claim (the C++ DecodeLimits::max_pixels).
MAX_PIXELS = 1 << 24
#: The most scans a JPEG may hold (the C++ DecodeLimits::max_jpeg_scans).
MAX_JPEG_SCANS = 100
#: The largest list or folder image file read (the C++ SourceOptions::max_image_bytes).
MAX_IMAGE_BYTES = 64 << 20


def _escaped(text, limit=200):
    """Text from a file, printable (as the C++ messages escape it)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    out = []
    for byte in text[:limit]:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _quoted(path):
    """A path for a message, quoted and escaped (the C++ detail::quoted_path)."""
    return "'" + _escaped(os.fsencode(path), 1024) + "'"


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _open_regular(path, context):
    """(descriptor, size) of the regular file at `path`: stat() first, so that a FIFO is never
    opened (it would block) nor a device; opened non-blocking in case it changed since."""
    def kind(mode):
        return next((name for test, name in _KINDS if test(mode)), "not a regular file")
    try:
        info = os.stat(path)
    except OSError as e:
        raise Error(f"{context}: cannot open {_quoted(path)}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Error(f"{context}: {_quoted(path)} is {kind(info.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise Error(f"{context}: cannot open {_quoted(path)}: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Error(f"{context}: {_quoted(path)} is {kind(info.st_mode)}, not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd, info.st_size


def _read_regular(path, context, max_bytes=None, limit="max_image_bytes"):
    """The bytes of the regular file at `path`, at most its stat() size and `max_bytes`."""
    fd, size = _open_regular(path, context)
    try:
        if max_bytes is not None and size > max_bytes:
            raise Error(f"{context}: {_quoted(path)} holds {size} bytes, more than the limit of "
                        f"{max_bytes} ({limit})")
        chunks, got = [], 0
        while got < size:
            try:
                chunk = os.read(fd, size - got)
            except OSError as e:
                raise Error(f"{context}: reading {_quoted(path)} failed after {got} bytes: "
                            f"{e.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---- decoding ----------------------------------------------------------------------------------

def _srgb_to_linear(x):
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(y):
    return torch.where(y <= 0.0031308, y * 12.92, 1.055 * y.clamp(min=0) ** (1 / 2.4) - 0.055)


def _round_u8(x):
    """Half away from zero (std::lround), clamped to [0, 255]."""
    return torch.floor(x + 0.5).clamp_(0, 255).to(torch.uint8)


def _u8(img):
    """An 8-bit Pillow image as an H x W x bands uint8 tensor (no numpy needed)."""
    w, h = img.size
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(
        h, w, len(img.getbands()))


def _png_pixels(img, channels):
    """A decoded PNG (Pillow image) as H x W x channels uint8, converted as libpng's simplified API
    converts (linear light for colour -> gray and for alpha onto black)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit gray: libpng's simplified API takes 16-bit samples as linear light
        img = img.convert("I")  # 32-bit ints holding the 16-bit values
        w, h = img.size
        a = torch.frombuffer(bytearray(img.tobytes("raw", "I")), dtype=torch.int32).reshape(h, w)
        a = a.to(torch.float64)
        g = _round_u8(_linear_to_srgb(a / 65535.0) * 255.0)
        return g[..., None].repeat(1, 1, channels)
    elif img.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA")
    if img.mode == "1":
        img = img.convert("L")
    a = _u8(img)
    has_alpha = img.mode in ("LA", "RGBA")
    colour = a[..., :-1] if has_alpha else a
    gray_in = colour.shape[2] == 1
    if not has_alpha and (gray_in or channels == 3):
        return colour if colour.shape[2] == channels else colour.repeat(1, 1, channels)
    lin = _srgb_to_linear(colour.to(torch.float64) / 255.0)
    if has_alpha:
        lin = lin * (a[..., -1:].to(torch.float64) / 255.0)
    if channels == 1 and not gray_in:
        lin = (lin * torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)).sum(2, True)
    out = _round_u8(_linear_to_srgb(lin) * 255.0)
    return out if out.shape[2] == channels else out.repeat(1, 1, channels)


def decode_image(data, channels, source, max_pixels=MAX_PIXELS, max_jpeg_scans=MAX_JPEG_SCANS):
    """JPEG or PNG bytes -> H x W x channels uint8 tensor; the format told by the first bytes, as
    the C++ decoder tells it. Raises protomem.Error naming `source`, also for a header claiming
    more than `max_pixels` pixels or a JPEG of more than `max_jpeg_scans` scans (checked before
    Pillow decodes a pixel)."""
    import io
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("protomem.data decodes images with Pillow: pip install pillow (or "
                          "protomem[data]; Debian: python3-pil)") from None
    if channels not in (1, 3):
        raise Error(f"decode_image: channels = {channels} (must be 1 or 3)")
    size = len(data)
    is_jpeg = data[:3] == b"\xff\xd8\xff"
    is_png = data[:8] == _PNG_SIGNATURE
    if not (is_jpeg or is_png):
        raise Error(f"{source}: not a JPEG or PNG image ({size} bytes, starting "
                    f"{_escaped(bytes(data[:8]))})")
    kind = "JPEG" if is_jpeg else "PNG"
    if is_jpeg:
        # Entropy-coded data stuffs every 0xFF byte (FF 00), so FF DA is an SOS marker.
        scans = bytes(data).count(b"\xff\xda")
        if scans > max_jpeg_scans:
            raise Error(f"{source}: cannot decode JPEG ({size} bytes): more than {max_jpeg_scans} "
                        f"scans, the limit (max_jpeg_scans): {scans}")
    try:
        img = Image.open(io.BytesIO(data), formats=[kind])  # reads the header only
        width, height = img.size
        if width * height > max_pixels:
            raise Error(f"{source}: cannot decode {kind} ({size} bytes): header claims {width} x "
                        f"{height} = {width * height} pixels, more than the limit of {max_pixels} "
                        "(max_pixels)")
        if is_jpeg:
            if channels == 1 and img.mode != "L":
                img.draft("L", img.size)  # libjpeg's own Y output, as JCS_GRAYSCALE
            img.load()
            if img.mode == "CMYK" or (channels == 1 and img.mode != "L"):
                raise ValueError(f"unsupported colour space {img.mode} for {channels} channel(s)")
            if channels == 3 and img.mode != "RGB":
                img = img.convert("RGB")  # gray -> RGB repeats Y, as libjpeg does
            return _u8(img)
        img.load()
        return _png_pixels(img, channels)
    except Error:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise Error(f"{source}: cannot decode {kind} ({size} bytes): {e}") from None


def _resample_taps(n_in, n_out):
    """The C++ loader's triangle filter (decode.hpp resample_taps): per output sample, the source
    indices and weights of its taps (n_out x taps; padding taps have weight 0)."""
    scale = n_in / n_out
    support = max(1.0, scale)
    max_taps = math.ceil(support) * 2 + 1
    index = torch.zeros(n_out, max_taps, dtype=torch.int64)
    weight = torch.zeros(n_out, max_taps, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(0, math.floor(centre - support))
        hi = min(n_in, math.ceil(centre + support), lo + max_taps)
        taps = []
        for j in range(lo, hi):
            x = abs((j + 0.5 - centre) / support)
            taps.append(1 - x if x < 1 else 0.0)
        total = 0.0
        for t in taps:
            total += t
        for k, t in enumerate(taps):
            index[i, k], weight[i, k] = lo + k, t / total
    return index, weight


_TAPS = {}


def _resample_axis(x, n_out, axis):
    """x (float64) resampled along `axis`, each output a sum over its taps in the C++ order."""
    n_in = x.shape[axis]
    if (n_in, n_out) not in _TAPS:
        if len(_TAPS) > 64:
            _TAPS.clear()
        _TAPS[n_in, n_out] = _resample_taps(n_in, n_out)
    index, weight = _TAPS[n_in, n_out]
    x = x.movedim(axis, 0)
    shape = (n_out,) + (1,) * (x.dim() - 1)
    total = torch.zeros((n_out,) + tuple(x.shape[1:]), dtype=torch.float64)
    for k in range(index.shape[1]):  # tap by tap: the same additions, in the same order, as C++
        total = total + weight[:, k].reshape(shape) * x[index[:, k]]
    return total.movedim(0, axis)


def resize_image(pixels, width, height):
    """H x W x C uint8 -> height x width x C by the C++ loader's rule (rows first, then columns,
    in float64, rounded once); the same size: returned unchanged."""
    h, w, _ = pixels.shape
    if (w, h) == (width, height):
        return pixels
    x = _resample_axis(pixels.to(torch.float64), width, 1)
    return _round_u8(_resample_axis(x, height, 0))


# ---- the datasets ------------------------------------------------------------------------------

class _ImageDataset(torch.utils.data.Dataset):
    """Shared by the readers: samples with labels, their bytes, decoding and substitution."""

    def __init__(self, image_size, channels, transform, skip_corrupt, normalize,
                 max_pixels=MAX_PIXELS, max_jpeg_scans=MAX_JPEG_SCANS):
        if max_pixels < 1 or max_jpeg_scans < 1:
            raise Error(f"protomem.data: max_pixels = {max_pixels}, max_jpeg_scans = "
                        f"{max_jpeg_scans} (both must be >= 1)")
        self.max_pixels, self.max_jpeg_scans = max_pixels, max_jpeg_scans
        if channels not in (1, 3):
            raise Error(f"protomem.data: channels = {channels} (must be 1 or 3)")
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(size) != 2 or min(size) < 1:
                raise Error(f"protomem.data: image_size = {image_size} (an int or (height, width), "
                            ">= 1)")
            image_size = size
        self.image_size, self.channels = image_size, channels
        self.transform, self.skip_corrupt, self.normalize = transform, skip_corrupt, normalize
        self.skipped = 0      # records left out at indexing time (skip_corrupt)
        self.substituted = 0  # items replaced at read time, in this process (skip_corrupt)

    def _set_labels(self, labels):
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.num_classes = int(torch.unique(self.labels).numel())
        self._members = None

    def __len__(self):
        return len(self.labels)

    def _bytes(self, index):
        raise NotImplementedError

    def describe(self, index):
        """Where sample `index` comes from: the file, and the record or line."""
        raise NotImplementedError

    def pixels(self, index):
        """Sample `index` decoded and resized: H x W x C uint8 (the C++ ImageLoader's pixels)."""
        where = self.describe(index)
        x = decode_image(self._bytes(index), self.channels, where, self.max_pixels,
                         self.max_jpeg_scans)
        if self.image_size is not None:
            x = resize_image(x, self.image_size[1], self.image_size[0])
        return x

    def _class_members(self, label):
        if self._members is None:
            members = {}
            for i, l in enumerate(self.labels.tolist()):
                members.setdefault(l, []).append(i)
            self._members = members
        return self._members[label]

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        label = int(self.labels[index])
        try:
            x = self.pixels(index)
        except Error:
            if not self.skip_corrupt:
                raise
            # As the C++ loader: the next sample of the same class (class order, wrapping) that
            # decodes; the label, and so the grouped batch, stays as the sampler made it.
            members = self._class_members(label)
            at = bisect.bisect_left(members, index)
            x = None
            for k in range(1, len(members)):
                try:
                    x = self.pixels(members[(at + k) % len(members)])
                    break
                except Error:
                    continue
            if x is None:
                raise Error(f"{self.describe(index)}: no sample of class {label} decodes "
                            f"({len(members)} tried)") from None
            self.substituted += 1
        x = x.permute(2, 0, 1).contiguous()
        if self.normalize:
            x = x.to(torch.float32).sub_(127.5).div_(128.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, label


def _read_idx(idx_path, rec_size, rec_path):
    """The .idx lines as (key, offset), checked as the C++ RecordIOFile checks them."""
    text = _read_regular(idx_path, "RecordIO index")
    entries, seen = [], set()
    idx_name = _escaped(os.fsencode(idx_path), 1024)
    for number, line in enumerate(text.split(b"\n"), 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t"):
            continue
        fields = line.strip(b" \t").replace(b"\t", b" ").split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise Error(f"{idx_name}:{number}: expected '<key>\\t<offset>' but found "
                        f"'{_escaped(line)}'")
        key, offset = int(fields[0]), int(fields[1])
        if offset >= rec_size or rec_size - offset < 8:
            raise Error(f"{idx_name}:{number}: record {key} at offset {offset} is past the end of "
                        f"{_quoted(rec_path)} ({rec_size} bytes)")
        if key in seen:
            raise Error(f"{idx_name}:{number}: key {key} appears twice")
        seen.add(key)
        entries.append((key, offset))
    return entries


class RecordIODataset(_ImageDataset):
    """The images of an insightface RecordIO pair (``train.rec`` and ``train.idx`` beside it).

    Record format (all little-endian): ``uint32 magic = 0xced7230a``, ``uint32 lrecord`` (upper 3
    bits the continuation flag, lower 29 the length), the payload, zero padding to 4 bytes. A
    payload holding the magic number at a 4-byte-aligned position is split there into parts with
    flags 1, 2 .., 3, joined here with the magic number between them. A payload is MXNet's
    IRHeader ``{uint32 flag; float label; uint64 id; uint64 id2}``, ``flag`` extra float labels
    (the first is then the label, as insightface reads it), then the JPEG or PNG bytes.

    When record 0 has flag > 0 it is insightface's header record, whose labels (a, b) say records
    1 .. a-1 are the images (records a .. b-1 describe identities and are not samples); otherwise
    every .idx entry is an image, in .idx order. Labels must be non-negative integers.

    Opening reads every sample's record frame and header (not its image) into ``labels`` (int64,
    one per sample; ``protomem.GroupedBatchSampler(dataset.labels, ...)`` takes it as is) and
    ``num_classes`` (distinct labels). ``keys[i]`` is sample i's record key.

    skip_corrupt: a record whose frame or image header is malformed is left out at opening and
    counted in ``skipped`` (the C++ RecordIOSource's rule); an item whose image does not decode is
    replaced by the next decodable sample of the same class (class order, wrapping; the C++
    ImageLoader's rule) and counted in ``substituted`` - per process, so with DataLoader workers
    each worker counts its own. A class none of whose images decodes still raises. Without it
    each of those raises protomem.Error.
    """

    def __init__(self, path_rec, image_size=None, channels=1, transform=None, skip_corrupt=False,
                 normalize=True, idx_path=None, max_pixels=MAX_PIXELS,
                 max_jpeg_scans=MAX_JPEG_SCANS):
        super().__init__(image_size, channels, transform, skip_corrupt, normalize, max_pixels,
                         max_jpeg_scans)
        self.rec_path = os.fspath(path_rec)
        self.idx_path = (os.fspath(idx_path) if idx_path
                         else os.path.splitext(self.rec_path)[0] + ".idx")
        self._fd, self._pid = None, None
        self._fd, self._rec_size = _open_regular(self.rec_path, "RecordIO")
        self._pid = os.getpid()
        entries = _read_idx(self.idx_path, self._rec_size, self.rec_path)
        self._offset = dict(entries)
        keys = self._header_record_keys() if 0 in self._offset else None
        if keys is None:
            keys = [k for k, _ in entries]
        self.keys, labels = [], []
        for key in keys:
            try:
                labels.append(self._read_label(key))
                self.keys.append(key)
            except Error:
                if not skip_corrupt:
                    raise
                self.skipped += 1
        if not self.keys:
            raise Error(f"{_quoted(self.rec_path)} holds no readable image record"
                        + (" (every one was corrupt and skipped)" if self.skipped else ""))
        self._set_labels(labels)
        self._close()  # DataLoader workers open their own descriptor

    # -- file access (one descriptor per process; pread, so threads may share it) --
    def _file(self):
        if self._fd is None or self._pid != os.getpid():
            self._fd, _ = _open_regular(self.rec_path, "RecordIO")
            self._pid = os.getpid()
        return self._fd

    def _close(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self._close()
        except Exception:
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, None
        return state

    def _pread(self, n, offset):
        try:
            data = os.pread(self._file(), n, offset)
        except OSError as e:
            raise Error(f"reading {_quoted(self.rec_path)} at byte {offset} failed: "
                        f"{e.strerror}") from None
        if len(data) != n:
            raise Error(f"reading {_quoted(self.rec_path)} at byte {offset} failed: "
                        "unexpected end of file")
        return data

    def _where(self, key):
        return f"{_quoted(self.rec_path)} record {key} (offset {self._offset[key]})"

    def describe(self, index):
        return self._where(self.keys[index])

    def _bad(self, key, at, what):
        start = self._offset[key]
        part = f", part at offset {at}" if at != start else ""
        raise Error(f"{_quoted(self.rec_path)} record {key} (offset {start}{part}): {what}")

    def read_record(self, key):
        """The payload of the record with `key` (parts of a split record joined)."""
        if key not in self._offset:
            raise Error(f"{_quoted(self.idx_path)} has no record with key {key}")
        size, offset, parts, part = self._rec_size, self._offset[key], [], 0
        while True:
            if size < 8 or offset > size - 8:
                self._bad(key, offset, f"its header runs past the end of the file ({size} bytes)")
            magic, lrecord = struct.unpack("<II", self._pread(8, offset))
            if magic != RECORD_MAGIC:
                self._bad(key, offset, f"bad magic number 0x{magic:08x} (expected 0xced7230a)")
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            padded = (length + 3) // 4 * 4
            if (part == 0 and cflag not in (0, 1)) or (part > 0 and cflag not in (2, 3)):
                self._bad(key, offset, f"part {part} has continuation flag {cflag}" + (
                    " (a record starts with 0 or 1)" if part == 0 else " (expected 2 or 3)"))
            if padded > size - offset - 8:
                self._bad(key, offset,
                          f"length {length} runs past the end of the file ({size} bytes)")
            parts.append(self._pread(length, offset + 8) if length else b"")
            offset += 8 + padded
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            part += 1

    def _read_prefix(self, key, n):
        """(at most the first n payload bytes, the whole length); reads a split or malformed
        record whole (read_record names what is wrong)."""
        offset = self._offset[key]
        if self._rec_size >= 8 and offset <= self._rec_size - 8:
            magic, lrecord = struct.unpack("<II", self._pread(8, offset))
            length = lrecord & ((1 << 29) - 1)
            if (magic == RECORD_MAGIC and lrecord >> 29 == 0
                    and (length + 3) // 4 * 4 <= self._rec_size - offset - 8):
                return self._pread(min(length, n), offset + 8) if length else b"", length
        payload = self.read_record(key)
        return payload[:n], len(payload)

    def _unpack(self, payload, where):
        """(flag, label, extra labels, image offset) of an image record's payload."""
        if len(payload) < _HEADER.size:
            raise Error(f"{where}: payload of {len(payload)} bytes is shorter than the 24-byte "
                        "image header")
        flag, label, _, _ = _HEADER.unpack_from(payload)
        extra = 4 * flag
        if extra > len(payload) - _HEADER.size:
            raise Error(f"{where}: header announces {flag} extra labels ({extra} bytes) but only "
                        f"{len(payload) - _HEADER.size} bytes follow the header")
        labels = struct.unpack_from(f"<{flag}f", payload, _HEADER.size) if flag else ()
        return flag, label, labels, _HEADER.size + extra

    def _header_record_keys(self):
        where = self._where(0)
        flag, _, labels, _ = self._unpack(self.read_record(0), where)
        if flag == 0:
            return None
        if (len(labels) < 2 or not labels[0] >= 1 or not labels[0] <= labels[1]
                or labels[0] != math.floor(labels[0]) or labels[0] > 4294967296.0):
            found = ("(" + ", ".join(f"{v:f}" for v in labels[:4])
                     + (", ...)" if len(labels) > 4 else ")")) if labels else "none"
            raise Error(f"{where}: header record's labels must be (first identity record, end) "
                        f"with 1 <= first <= end, integers; found {found}")
        first_identity = int(labels[0])
        for key in range(1, first_identity):
            if key not in self._offset:
                raise Error(f"{_quoted(self.idx_path)} lacks record {key}, an image (the header "
                            "record "
                            f"says images are records 1 .. {first_identity - 1})")
        return list(range(1, first_identity))

    def _read_label(self, key):
        """A record's label from its frame and header, without reading its image."""
        where = self._where(key)
        payload, length = self._read_prefix(key, 64)
        if len(payload) >= 4:  # more extra labels than the first 64 bytes hold: read them all
            needed = _HEADER.size + 4 * struct.unpack_from("<I", payload)[0]
            if needed > len(payload) and length > len(payload):
                payload, length = self._read_prefix(key, needed)
        flag, label, labels, image = self._unpack(payload, where)
        value = labels[0] if flag > 0 else label
        if not (value >= 0) or value != math.floor(value) or value > 9007199254740992.0:
            raise Error(f"{where}: label {value:g} is not a non-negative integer")
        if image == length:
            raise Error(f"{where}: holds no image bytes")
        return int(value)

    def _bytes(self, index):
        key = self.keys[index]
        payload = self.read_record(key)
        _, _, _, image = self._unpack(payload, self._where(key))
        return payload[image:]


def _parse_list(path):
    """(paths, labels) of a list file by the C++ DatasetIndex's rules."""
    text = _read_regular(path, "dataset list")
    paths, labels = [], []
    path = _escaped(os.fsencode(path), 1024)  # in messages
    for number, line in enumerate(text.split(b"\n"), 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        body = line.strip(b" \t")
        if not body or body.startswith(b"#"):
            continue
        cut = max(body.rfind(b" "), body.rfind(b"\t"))
        if cut < 0:
            raise Error(f"{path}:{number}: expected '<path> <label>' but found one field "
                        f"'{_escaped(body)}'")
        label_text, path_text = body[cut + 1:], body[:cut].rstrip(b" \t")
        if label_text.startswith(b"-"):
            raise Error(f"{path}:{number}: label '{_escaped(label_text)}' is negative "
                        "(labels must be >= 0)")
        if not label_text.isdigit():
            raise Error(f"{path}:{number}: label '{_escaped(label_text)}' is not a non-negative "
                        "integer")
        value = int(label_text)
        if value > 2**63 - 1:
            raise Error(f"{path}:{number}: label '{_escaped(label_text)}' is out of range "
                        f"(at most {2**63 - 1})")
        paths.append(os.fsdecode(path_text))
        labels.append(value)
    if not labels:
        raise Error(f"{path}: holds no samples (every line is empty or a comment)")
    return paths, labels


class ImageListDataset(_ImageDataset):
    """Image files named by a list file or found in an image folder.

    A list file has ``<path> <label>`` per line (the label the last field, a non-negative integer;
    the path everything before it, inner spaces kept; empty and ``#`` lines skipped); a relative
    path is taken relative to the list file's folder. A folder holds one subfolder per identity:
    the subfolders in name order (byte order, as the C++ reader sorts paths) get labels 0, 1, ...,
    and their .jpg/.jpeg/.png files (any case) in name order are the samples. ``labels``,
    ``num_classes``, items and errors as RecordIODataset; a missing or unreadable image file raises
    when read (or, with skip_corrupt, is substituted like an undecodable image). ``paths[i]`` is
    sample i's file; for a folder, ``identity_names[l]`` is label l's subfolder.
    """

    def __init__(self, list_path_or_folder, image_size=None, channels=1, transform=None,
                 skip_corrupt=False, normalize=True, max_pixels=MAX_PIXELS,
                 max_jpeg_scans=MAX_JPEG_SCANS, max_image_bytes=MAX_IMAGE_BYTES):
        super().__init__(image_size, channels, transform, skip_corrupt, normalize, max_pixels,
                         max_jpeg_scans)
        self.max_image_bytes = max_image_bytes
        source = os.fspath(list_path_or_folder)
        self.source = source
        if os.path.isdir(source):
            self._kind = "folder"
            identities = sorted((e for e in os.scandir(source) if e.is_dir()),
                                key=lambda e: os.fsencode(e.name))
            self.paths, labels, self.identity_names = [], [], []
            for label, d in enumerate(identities):
                files = sorted((e.path for e in os.scandir(d.path) if e.is_file()
                                and os.path.splitext(e.name)[1].lower() in _IMAGE_EXTENSIONS),
                               key=os.fsencode)
                self.paths += files
                labels += [label] * len(files)
                self.identity_names.append(d.name)
            if not self.paths:
                raise Error(f"image folder {_quoted(source)} holds no image")
        else:
            self._kind = "list"
            paths, labels = _parse_list(source)
            folder = os.path.dirname(source)
            self.paths = [p if os.path.isabs(p) or not folder else os.path.join(folder, p)
                          for p in paths]
        self._set_labels(labels)

    def _describe_only(self, index):
        return f"sample {index} of {self._kind} {_quoted(self.source)}"

    def describe(self, index):
        return f"{_quoted(self.paths[index])} ({self._describe_only(index)})"

    def _bytes(self, index):
        return _read_regular(self.paths[index], self._describe_only(index), self.max_image_bytes)


def open_dataset(path, **options):
    """A RecordIODataset for a .rec path, an ImageListDataset for a folder or any other file (the
    C++ open_image_source's rule); `options` go to the dataset."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return ImageListDataset(path, **options)
    if path.endswith(".rec") and len(path) > 4:
        return RecordIODataset(path, **options)
    return ImageListDataset(path, **options)
