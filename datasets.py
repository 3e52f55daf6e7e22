"""The 28x28 data sets for all scripts: find and verify their files, split them, serve
in-memory batches.

MNIST (handwritten digits) ships in the repository; Fashion-MNIST (clothing) and KMNIST
(cursive hiragana) use the same file format and torchvision's layout beside it. Data flows one
way: the IDX files in ``data/<set>/raw`` become uint8 tensors here, and ``Batches`` turns those
into normalized (and, for training, augmented) batches on the device.
"""
import functools
import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import cli
from atomic import new_folder, write_atomic

MEAN, STD = 0.1307, 0.3081           # MNIST's (``normalization`` of its training images)
CLASSES = [str(digit) for digit in range(10)]
TRAIN_SIZE = 60_000                   # training images in each set
SIDE = 28                             # pixels per image side
# The folder beside the scripts, where MNIST ships: every script's default, wherever it is run
# from (an editor may start it in a parent folder, where a relative "data" holds nothing).
DATA_DIR = str(Path(__file__).resolve().parent / "data")

# Random affine augmentation: each training image gets its own draw from these ranges
# (times the strength passed to ``random_affine_matrices``).
MAX_ROTATION_DEG = 15.0
MAX_SCALE = 0.15                      # zoom by a factor in [0.85, 1.15]
MAX_SHEAR_DEG = 10.0
MAX_SHIFT_PX = 3.0
# The elastic distortion's smoothness (Simard, Steinkraus & Platt 2003): its displacement field
# is uniform noise blurred by a Gaussian of this width, times the strength in pixels.
ELASTIC_SIGMA_PX = 4.0


class DataError(cli.Problem):
    """A data file is missing or damaged; the message says which and what to do."""


@dataclass(frozen=True)
class IdxFile:
    name: str                         # uncompressed file name, as torchvision lays it out
    size: int
    magic: int                        # 2051 for images, 2049 for labels
    count: int
    md5: str | None = None            # of the uncompressed file, where it is published
    archive_md5: str | None = None    # of the canonical .gz, where only that is published


@dataclass(frozen=True)
class Dataset:
    name: str                         # as --dataset takes it
    title: str
    folder: str                       # torchvision's: data/<folder>/raw
    classes: tuple[str, ...]
    files: dict                       # (split, "images" | "labels") -> IdxFile
    flip: bool                        # a mirrored image is still of its class
    augment_strength: float           # the default scale of the affine ranges above
    digits: bool                      # handwritten digits, as handwriting.py prepares them
    get: str                          # where to get the files, for the message when missing


def _idx_files(checksums: dict) -> dict:
    """The four IDX files of a 60,000 + 10,000 image set; ``checksums`` gives each file its
    published checksum, as ``md5=`` or ``archive_md5=``."""
    shapes = {("train", "images"): ("train-images-idx3-ubyte", 47_040_016, 2051, 60_000),
              ("train", "labels"): ("train-labels-idx1-ubyte", 60_008, 2049, 60_000),
              ("test", "images"): ("t10k-images-idx3-ubyte", 7_840_016, 2051, 10_000),
              ("test", "labels"): ("t10k-labels-idx1-ubyte", 10_008, 2049, 10_000)}
    return {key: IdxFile(*shapes[key], **checksums[key]) for key in shapes}


DATASETS = {
    "mnist": Dataset(
        "mnist", "MNIST", "MNIST", tuple(CLASSES),
        _idx_files({("train", "images"): dict(md5="6bbc9ace898e44ae57da46a324031adb"),
                    ("train", "labels"): dict(md5="a25bea736e30d166cdddb491f175f624"),
                    ("test", "images"): dict(md5="2646ac647ad5339dbf082846283269ea"),
                    ("test", "labels"): dict(md5="27ae3e4e09519cfbb04c329615203637")}),
        flip=False, augment_strength=1.0, digits=True,
        get="restore the shipped archives with `git checkout -- data/MNIST/raw`"),
    "fashion-mnist": Dataset(
        "fashion-mnist", "Fashion-MNIST", "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"),
        _idx_files({("train", "images"): dict(md5="f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                    ("train", "labels"): dict(md5="9018921c3c673c538a1fc5bad174d6f9"),
                    ("test", "images"): dict(md5="8181f5470baa50b63fa0f6fddb340f0a"),
                    ("test", "labels"): dict(md5="15d484375f8d13e6eb1aabb0c3f46965")}),
        flip=True, augment_strength=0.0, digits=False,    # docs/experiments.md, "Fashion-MNIST"
        get="put the four .gz files of github.com/zalandoresearch/fashion-mnist there (on "
            "Debian: apt-get install dataset-fashion-mnist, then copy "
            "/usr/share/datasets/fashion-mnist/*.gz)"),
    # Its uncompressed files have no published checksums: its archives' are checked instead.
    "kmnist": Dataset(
        "kmnist", "KMNIST", "KMNIST",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        _idx_files({("train", "images"): dict(archive_md5="bdb82020997e1d708af4cf47b453dcf7"),
                    ("train", "labels"): dict(archive_md5="e144d726b3acfaa3e44228e80efcd344"),
                    ("test", "images"): dict(archive_md5="5c965bf0a639b31b8f53240b1b52f4d7"),
                    ("test", "labels"): dict(archive_md5="7320c461ea6c1c855c0b718fb2a4b134")}),
        flip=False, augment_strength=1.0, digits=False,
        get="put the four .gz files of github.com/rois-codh/kmnist there"),
}


def raw_dir(root: str | Path, dataset: str = "mnist") -> Path:
    return Path(root) / DATASETS[dataset].folder / "raw"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _problem(data: bytes, spec: IdxFile) -> str | None:
    """What is wrong with the bytes of an IDX file, or None when they are the canonical file
    (as far as its published checksum tells)."""
    if len(data) < 8:
        return f"is truncated ({len(data)} bytes, expected {spec.size:,})"
    magic, count = struct.unpack(">II", data[:8])
    if magic != spec.magic:
        return f"has magic number {magic}, expected {spec.magic} (not a {spec.name} file)"
    if count != spec.count:
        return f"says it holds {count:,} items, expected {spec.count:,}"
    if len(data) != spec.size:
        return f"is truncated or padded ({len(data):,} bytes, expected {spec.size:,})"
    if spec.md5 is not None and _md5(data) != spec.md5:
        return "fails its MD5 checksum (the contents are damaged)"
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _verified_bytes(root: str | Path, dataset: Dataset, spec: IdxFile) -> bytes:
    """The canonical bytes of one file, extracting it from its .gz the first time.

    Where only the archive's checksum is published, the archive is checked on every load (an
    MD5 of a few MB) and the extracted file must match its size and header.
    """
    raw = raw_dir(root, dataset.name)
    path, archive = raw / spec.name, raw / f"{spec.name}.gz"
    if spec.archive_md5 is not None:
        if not archive.exists():
            raise DataError(f"{archive} is missing: {dataset.get}")
        packed = _read(archive)    # read once: the extraction below uses it too
        if _md5(packed) != spec.archive_md5:
            raise DataError(f"{archive} fails its MD5 checksum (damaged, or another release): "
                            f"{dataset.get}")
    if path.exists():
        data = _read(path)
        problem = _problem(data, spec)
        if problem is None:
            return data
        if not archive.exists():
            raise DataError(f"{path} {problem}: delete it and {dataset.get}")
        # A damaged extracted file is rebuilt from its archive below.
    if not archive.exists():
        raise DataError(f"{path} and {archive.name} are missing: {dataset.get}")
    try:
        data = gzip.decompress(packed if spec.archive_md5 is not None else _read(archive))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is damaged ({e}): {dataset.get}") from None
    problem = _problem(data, spec)
    if problem is not None:
        raise DataError(f"{archive} {problem}: {dataset.get}")
    write_atomic(path, lambda f: f.write(data))
    return data


def _download(root: str | Path, dataset: Dataset) -> None:
    """Last resort when none of a set's files is present: torchvision's downloader."""
    import torchvision.datasets
    downloader = getattr(torchvision.datasets, dataset.folder)
    raw = raw_dir(root, dataset.name)
    try:
        with new_folder(raw):
            for train in (True, False):
                downloader(root, train=train, download=True)
    except Exception as e:  # torchvision raises plain RuntimeError/URLError for a failed download
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"no {dataset.title} files in {raw} and "
                        f"downloading them failed ({reason}): point --data-dir at the folder "
                        f"holding {dataset.folder}/raw, or {dataset.get}") from None


def load(root: str | Path, split: str, dataset: str = "mnist"
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 28 x 28, uint8) and labels (N, int64) of the "train" or "test" split."""
    spec = DATASETS[dataset]
    raw = raw_dir(root, dataset)
    names = [file.name for file in spec.files.values()]
    if not any((raw / n).exists() or (raw / f"{n}.gz").exists() for n in names):
        _download(root, spec)
    images = _verified_bytes(root, spec, spec.files[(split, "images")])
    labels = _verified_bytes(root, spec, spec.files[(split, "labels")])
    count = spec.files[(split, "images")].count
    # bytearray: torch.frombuffer wants a writable buffer
    x = torch.frombuffer(bytearray(images), dtype=torch.uint8, offset=16).view(count, SIDE, SIDE)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8, offset=8).long()
    return x, y


def verify(root: str | Path, dataset: str = "mnist") -> None:
    """Check (and if needed extract) all four files, so damage is reported before training."""
    for split in ("train", "test"):
        load(root, split, dataset)


def normalization(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the pixels in [0, 1], rounded to 4 places: each set is
    normalized with those of its own training images (MNIST's: 0.1307, 0.3081)."""
    # Summed over the 256 grey levels' counts in float64: exact, and no float copy of the 47
    # million pixels (0.07 s on one core instead of 0.17-0.4 s, paid by every train.py run).
    counts = torch.bincount(images.flatten(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * levels).sum() / n
    std = ((counts * (levels - mean) ** 2).sum() / (n - 1)).sqrt()
    return round(mean.item(), 4), round(std.item(), 4)


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
                           device: torch.device | None = None, flip: bool = False
                           ) -> torch.Tensor:
    """``n`` random affine matrices (n x 2 x 3, ``affine_grid``'s form): each one rotates,
    scales, shears and shifts by its own amount; ``strength`` scales every range (0.5: half
    the rotation, zoom, shear and shift). ``flip`` mirrors half of them left to right, at
    random."""
    u = (torch.rand(n, 5, generator=generator, device=device) * 2 - 1) * strength
    angle = u[:, 0] * math.radians(MAX_ROTATION_DEG)
    scale = 1 + u[:, 1] * MAX_SCALE
    shear = u[:, 2] * math.radians(MAX_SHEAR_DEG)
    shift = u[:, 3:] * (2 * MAX_SHIFT_PX / SIDE)    # grid coordinates span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + torch.tan(shear) * cos, shift[:, 0]], dim=1),
        torch.stack([sin, cos + torch.tan(shear) * sin, shift[:, 1]], dim=1),
    ], dim=1)
    if flip:    # drawn only then, so that the other sets' random stream stays as it was
        mirrored = torch.rand(n, generator=generator, device=device) < 0.5
        theta[:, :, 0] *= torch.where(mirrored, -1.0, 1.0)[:, None]    # x reads from -x
    return theta


@functools.cache
def _blur_matrix(device: torch.device) -> torch.Tensor:
    """SIDE x SIDE: multiplying by it blurs a column by a Gaussian of ELASTIC_SIGMA_PX (each
    row sums to 1, so the edges are not darkened)."""
    at = torch.arange(SIDE, dtype=torch.float32, device=device)
    weights = torch.exp(-((at[:, None] - at[None, :]) / ELASTIC_SIGMA_PX) ** 2 / 2)
    return weights / weights.sum(dim=1, keepdim=True)


def random_displacements(n: int, generator: torch.Generator, alpha: float,
                         device: torch.device | None = None) -> torch.Tensor:
    """``n`` smooth random displacement fields (n x SIDE x SIDE x 2, in ``grid_sample``'s
    coordinates): uniform noise in [-1, 1] blurred along both axes, times ``alpha`` pixels."""
    noise = torch.rand(n, 2, SIDE, SIDE, generator=generator, device=device) * 2 - 1
    blur = _blur_matrix(noise.device)
    return (blur @ noise @ blur.T).permute(0, 2, 3, 1) * (alpha * 2 / SIDE)


def warp(x: torch.Tensor, theta: torch.Tensor,
         displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Apply one affine matrix per image, then move each sampled point by ``displacement``
    (if given); ``x`` holds raw pixels in [0, 1], so the zeros that ``grid_sample`` pads with
    are background."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Batches:
    """(images, labels) batches of a split held as one tensor on the device.

    Each pass draws a new permutation when ``shuffle`` is on, so every image is seen exactly
    once per pass; batches are formed by indexing, with no per-sample Python work.
    ``generator`` (on ``device``) drives both the order and the augmentation, so one seed
    (and one saved state) fixes the whole data stream.

    With ``part=(rank, parts)`` this process yields only its slice of each batch (split as
    ``torch.tensor_split`` splits), while drawing the whole pass's random numbers as one
    process would: the processes of a run together see exactly one process's batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 device: torch.device, mean: float = MEAN, std: float = STD,
                 shuffle: bool = False, augment: float = 0.0, flip: bool = False,
                 elastic: float = 0.0, generator: torch.Generator | None = None,
                 part: tuple[int, int] = (0, 1)):
        """``augment`` is the strength of the random affine augmentation, ``flip`` adds random
        left-right mirroring, ``elastic`` an elastic distortion of that many pixels; 0 and
        False turn them off."""
        if (shuffle or augment or flip or elastic) and generator is None:
            raise ValueError("shuffling or augmenting needs a generator")
        self.images = images.to(device).unsqueeze(1).float().div_(255)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.shuffle, self.augment, self.flip, self.generator = shuffle, augment, flip, generator
        self.elastic = elastic
        self.rank, self.parts = part

    def batch_sizes(self) -> list[int]:
        """The size of each whole batch of a pass, all processes' slices together."""
        n = len(self.labels)
        return [min(self.batch_size, n - start) for start in range(0, n, self.batch_size)]

    def _slice(self, start: int, stop: int) -> tuple[int, int]:
        """This process's rows of the batch ``start:stop``."""
        size, extra = divmod(stop - start, self.parts)
        first = start + self.rank * size + min(self.rank, extra)
        return first, first + size + (self.rank < extra)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        device = self.labels.device
        order = torch.randperm(n, generator=self.generator, device=device) if self.shuffle else None
        # The whole pass's matrices at once: a handful of operations per pass instead of per batch
        theta = (random_affine_matrices(n, self.generator, self.augment, device, self.flip)
                 if self.augment or self.flip or self.elastic else None)
        for whole_start in range(0, n, self.batch_size):
            whole_stop = min(whole_start + self.batch_size, n)
            start, stop = self._slice(whole_start, whole_stop)
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                index = order[start:stop]
                x, y = self.images[index], self.labels[index]
            displacement = None
            if self.elastic:    # drawn per whole batch (a pass's would fill hundreds of MB)
                fields = random_displacements(whole_stop - whole_start, self.generator,
                                              self.elastic, device)
                displacement = fields[start - whole_start:stop - whole_start]
            if theta is not None:
                x = warp(x, theta[start:stop], displacement)
            yield (x - self.mean) / self.std, y
