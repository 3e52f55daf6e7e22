"""MNIST for all scripts: find and verify the shipped files, split them, serve in-memory batches.

Data flows one way: the IDX files in ``data/MNIST/raw`` become uint8 tensors here, and
``Batches`` turns those into normalized (and, for training, augmented) batches on the device.
"""
import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from atomic import write_atomic

MEAN, STD = 0.1307, 0.3081           # of the 60,000 training images, pixels scaled to [0, 1]
CLASSES = [str(digit) for digit in range(10)]
TRAIN_SIZE = 60_000
SIDE = 28                             # pixels per image side

# Random affine augmentation: each training image gets its own draw from these ranges
# (times the strength passed to ``random_affine_matrices``).
MAX_ROTATION_DEG = 15.0
MAX_SCALE = 0.15                      # zoom by a factor in [0.85, 1.15]
MAX_SHEAR_DEG = 10.0
MAX_SHIFT_PX = 3.0


class DataError(Exception):
    """A data file is missing or damaged; the message says which and what to do."""


@dataclass(frozen=True)
class IdxFile:
    name: str          # uncompressed file name, as torchvision lays it out
    size: int
    md5: str           # of the uncompressed file (the canonical MNIST release)
    magic: int         # 2051 for images, 2049 for labels
    count: int


FILES = {
    ("train", "images"): IdxFile("train-images-idx3-ubyte", 47_040_016,
                                 "6bbc9ace898e44ae57da46a324031adb", 2051, 60_000),
    ("train", "labels"): IdxFile("train-labels-idx1-ubyte", 60_008,
                                 "a25bea736e30d166cdddb491f175f624", 2049, 60_000),
    ("test", "images"): IdxFile("t10k-images-idx3-ubyte", 7_840_016,
                                "2646ac647ad5339dbf082846283269ea", 2051, 10_000),
    ("test", "labels"): IdxFile("t10k-labels-idx1-ubyte", 10_008,
                                "27ae3e4e09519cfbb04c329615203637", 2049, 10_000),
}


def raw_dir(root: str | Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _problem(data: bytes, spec: IdxFile) -> str | None:
    """What is wrong with the bytes of an IDX file, or None when they are the canonical file."""
    if len(data) < 8:
        return f"is truncated ({len(data)} bytes, expected {spec.size:,})"
    magic, count = struct.unpack(">II", data[:8])
    if magic != spec.magic:
        return f"has magic number {magic}, expected {spec.magic} (not an MNIST {spec.name} file)"
    if count != spec.count:
        return f"says it holds {count:,} items, expected {spec.count:,}"
    if len(data) != spec.size:
        return f"is truncated or padded ({len(data):,} bytes, expected {spec.size:,})"
    if hashlib.md5(data).hexdigest() != spec.md5:
        return "fails its MD5 checksum (the contents are damaged)"
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _verified_bytes(root: str | Path, spec: IdxFile) -> bytes:
    """The canonical bytes of one file, extracting it from its .gz the first time."""
    raw = raw_dir(root)
    path, archive = raw / spec.name, raw / f"{spec.name}.gz"
    restore = f"restore the shipped archives with `git checkout -- {raw}`"
    if path.exists():
        data = _read(path)
        problem = _problem(data, spec)
        if problem is None:
            return data
        if not archive.exists():
            raise DataError(f"{path} {problem}: delete it and {restore}")
        # A damaged extracted file is rebuilt from its archive below.
    if not archive.exists():
        raise DataError(f"{path} and {archive.name} are missing: {restore}")
    try:
        data = gzip.decompress(_read(archive))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is damaged ({e}): {restore}") from None
    problem = _problem(data, spec)
    if problem is not None:
        raise DataError(f"{archive} {problem}: {restore}")
    write_atomic(path, lambda f: f.write(data))
    return data


def _download(root: str | Path) -> None:
    """Last resort when no MNIST file is present at all: torchvision's downloader."""
    from torchvision.datasets import MNIST
    try:
        for train in (True, False):
            MNIST(root, train=train, download=True)
    except Exception as e:  # torchvision raises plain RuntimeError/URLError for a failed download
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"no MNIST files in {raw_dir(root)} and downloading them failed "
                        f"({reason}): point --data-dir at the folder holding MNIST/raw, or "
                        f"restore them with `git checkout -- {raw_dir(root)}`") from None


def load(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 28 x 28, uint8) and labels (N, int64) of the "train" or "test" split."""
    raw = raw_dir(root)
    names = [spec.name for spec in FILES.values()]
    if not any((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names):
        _download(root)
    images = _verified_bytes(root, FILES[(split, "images")])
    labels = _verified_bytes(root, FILES[(split, "labels")])
    count = FILES[(split, "images")].count
    # bytearray: torch.frombuffer wants a writable buffer
    x = torch.frombuffer(bytearray(images), dtype=torch.uint8, offset=16).view(count, SIDE, SIDE)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8, offset=8).long()
    return x, y


def verify(root: str | Path) -> None:
    """Check (and if needed extract) all four files, so damage is reported before training."""
    for split in ("train", "test"):
        load(root, split)


def train_val_split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint index sets (train, validation) over range(n), chosen by a seeded permutation."""
    if not 0 <= val_size < n:
        raise ValueError(f"validation size must be in [0, {n}), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def scaled_val_size(val_size: int, subset: int) -> int:
    """The validation size for a subset of the training images, in the same proportion."""
    return round(val_size * subset / TRAIN_SIZE)


def random_affine_matrices(n: int, generator: torch.Generator, strength: float = 1.0,
                           device: torch.device | None = None) -> torch.Tensor:
    """``n`` random affine matrices (n x 2 x 3, ``affine_grid``'s form): each one rotates,
    scales, shears and shifts by its own amount; ``strength`` scales every range (0.5: half
    the rotation, zoom, shear and shift)."""
    u = (torch.rand(n, 5, generator=generator, device=device) * 2 - 1) * strength
    angle = u[:, 0] * math.radians(MAX_ROTATION_DEG)
    scale = 1 + u[:, 1] * MAX_SCALE
    shear = u[:, 2] * math.radians(MAX_SHEAR_DEG)
    shift = u[:, 3:] * (2 * MAX_SHIFT_PX / SIDE)    # grid coordinates span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([
        torch.stack([cos, -sin + torch.tan(shear) * cos, shift[:, 0]], dim=1),
        torch.stack([sin, cos + torch.tan(shear) * sin, shift[:, 1]], dim=1),
    ], dim=1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply one affine matrix per image; ``x`` holds raw pixels in [0, 1], so the zeros that
    ``grid_sample`` pads with are background."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Batches:
    """(images, labels) batches of a split held as one tensor on the device.

    Each pass draws a new permutation when ``shuffle`` is on, so every image is seen exactly
    once per pass; batches are formed by indexing, with no per-sample Python work.
    ``generator`` (on ``device``) drives both the order and the augmentation, so one seed
    (and one saved state) fixes the whole data stream.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 device: torch.device, mean: float = MEAN, std: float = STD,
                 shuffle: bool = False, augment: float = 0.0,
                 generator: torch.Generator | None = None):
        """``augment`` is the strength of the random affine augmentation; 0 turns it off."""
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffling or augmenting needs a generator")
        self.images = images.to(device).unsqueeze(1).float().div_(255)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.shuffle, self.augment, self.generator = shuffle, augment, generator

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        device = self.labels.device
        order = torch.randperm(n, generator=self.generator, device=device) if self.shuffle else None
        # The whole pass's matrices at once: a handful of operations per pass instead of per batch
        theta = (random_affine_matrices(n, self.generator, self.augment, device)
                 if self.augment else None)
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start:start + self.batch_size]
                y = self.labels[start:start + self.batch_size]
            else:
                index = order[start:start + self.batch_size]
                x, y = self.images[index], self.labels[index]
            if theta is not None:
                x = warp(x, theta[start:start + self.batch_size])
            yield (x - self.mean) / self.std, y
