"""Turn a photo, scan or drawing of one digit into a 28x28 image prepared the way MNIST was.

MNIST digits are light on dark, their longer side scaled to 20 px with antialiasing, placed in
28x28 with their centre of mass at the centre. People's pictures are dark ink on light paper,
large, off-centre, in colour, unevenly lit, with specks, or drawn on a transparent canvas.
``prepare`` bridges the two; ``show.py --image`` uses it.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

import datasets

WORK_SIZE = 256          # pictures are shrunk to at most this before the analysis
DIGIT_SIZE = 20          # MNIST's box for the digit's longer side
CANVAS = datasets.SIDE      # MNIST's image side
MIN_CONTRAST = 0.08      # ink this close to the background counts as no ink at all
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageProblem(Exception):
    """The file is not a readable picture of a digit; the message says why."""


def open_image(path: str | Path) -> Image.Image:
    """The picture upright (EXIF orientation applied), fully decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "not an image" if isinstance(e, UnidentifiedImageError) else str(e)
        raise ImageProblem(f"cannot read {path}: {reason}") from None


def grayscale(image: Image.Image) -> torch.Tensor:
    """Luminance in [0, 1], with any transparency composited onto the background it implies.

    A drawing app's export often stores transparent pixels as black: dropping the alpha channel
    would turn black strokes on a transparent canvas into a black square. So the canvas takes
    the colour opposite to the visible strokes.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                              "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = _tensor(rgba.getchannel("A"))
        gray = _tensor(rgba.convert("L"))
        ink = gray[alpha > 0.5]
        canvas = 1.0 if ink.numel() == 0 or ink.mean() < 0.5 else 0.0
        return alpha * gray + (1 - alpha) * canvas
    return _tensor(image.convert("L"))


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.tensor(bytearray(image.tobytes()), dtype=torch.uint8
                        ).view(image.height, image.width).float() / 255


def _shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    scale = size / max(x.shape)
    if scale >= 1:
        return x
    shape = [max(1, round(s * scale)) for s in x.shape]
    return F.interpolate(x[None, None], size=shape, mode="area")[0, 0]


def _min_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x[None, None], k, stride=1, padding=k // 2)[0, 0]


def _max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x[None, None], k, stride=1, padding=k // 2)[0, 0]


def ink_on_dark(x: torch.Tensor) -> torch.Tensor:
    """Make the ink light on a dark background, with the paper's level and shading removed."""
    # Morphology with a window wider than any stroke erases the strokes and keeps the paper,
    # uneven light included; what differs from it is ink.
    k = max(3, (max(x.shape) // 6) | 1)

    def smooth(t):
        return F.avg_pool2d(t[None, None], k, stride=1, padding=k // 2,
                            count_include_pad=False)[0, 0]

    # The border is mostly paper; the ink is whichever side of it the extremes lie on. The
    # extremes are the outer 0.1 % of the pixels: a digit small on its page can cover under
    # 2 %, and coarser quantiles then see only paper and guess light ink.
    paper = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]]).median()
    if paper - x.quantile(0.001) > x.quantile(0.999) - paper:
        # Dark ink on light paper: light falls on both, so divide the paper's level out.
        paper = smooth(_min_pool(_max_pool(x, k), k))
        return (1 - x / paper.clamp(min=1e-3)).clamp(min=0)
    return (x - smooth(_max_pool(_min_pool(x, k), k))).clamp(min=0)


def _otsu(x: torch.Tensor) -> float:
    """The threshold that best splits the values into two groups (Otsu, 1979)."""
    hist = torch.histc(x, bins=256, min=0, max=float(x.max()))
    centers = torch.linspace(0, float(x.max()), 256)
    weight = hist.cumsum(0)
    mean = (hist * centers).cumsum(0)
    total, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - total * mean) ** 2 / (weight * (total - weight)).clamp(min=1)
    return float(centers[between.argmax()])


def _components(mask: torch.Tensor) -> torch.Tensor:
    """Label 8-connected regions of ``mask`` (0 = background) by propagating the largest label."""
    labels = torch.where(mask, torch.arange(1, mask.numel() + 1, dtype=torch.float
                                            ).view(mask.shape), torch.zeros(()))
    while True:
        grown = _max_pool(labels, 3) * mask
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def digit_mask(ink: torch.Tensor) -> torch.Tensor:
    """Where the digit is: the biggest stroke region plus parts of it, without stray specks."""
    full = ink > max(_otsu(ink), MIN_CONTRAST)
    # Regions are found on a grid of at most 64x64 cells: fast, and hairline gaps close.
    cell = -(-max(ink.shape) // 64)
    mask = F.max_pool2d(full.float()[None, None], cell, ceil_mode=True)[0, 0] > 0
    labels = _components(mask)
    ids, sizes = labels[mask].unique(return_counts=True)
    main = ids[sizes.argmax()]
    rows, cols = (labels == main).nonzero().unbind(1)
    margin = max(mask.shape) * 0.05
    keep = torch.zeros_like(mask)
    for label, size in zip(ids.tolist(), sizes.tolist()):
        part = labels == label
        r, c = part.nonzero().unbind(1)
        inside = (r.min() >= rows.min() - margin and r.max() <= rows.max() + margin and
                  c.min() >= cols.min() - margin and c.max() <= cols.max() + margin)
        if size >= 0.25 * sizes.max() or inside:
            keep |= part
    cells = keep.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return cells[:ink.shape[0], :ink.shape[1]] & full


def prepare(image: Image.Image) -> torch.Tensor:
    """A 28x28 tensor in [0, 1], light digit on black, sized and centred as in MNIST."""
    x = _shrink(grayscale(image), WORK_SIZE)
    if x.max() - x.min() < MIN_CONTRAST:
        raise ImageProblem("the picture is blank")
    ink = ink_on_dark(x)
    if ink.max() < MIN_CONTRAST:
        raise ImageProblem("no digit found in the picture")
    keep = digit_mask(ink)
    rows, cols = keep.nonzero().unbind(1)
    # Strokes fade out at their edges: widen the kept area a little so the fade survives.
    ink = ink * _max_pool(keep.float(), 5)
    digit = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    digit = digit / digit.quantile(0.99).clamp(min=MIN_CONTRAST)    # MNIST strokes saturate
    scale = DIGIT_SIZE / max(digit.shape)
    shape = [max(1, round(s * scale)) for s in digit.shape]
    digit = F.interpolate(digit[None, None], size=shape, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1)
    # Centre of mass to the centre of the 28x28 canvas, by whole pixels as in MNIST.
    total = digit.sum()
    ys = torch.arange(shape[0], dtype=torch.float)
    xs = torch.arange(shape[1], dtype=torch.float)
    com_y, com_x = (digit.sum(1) * ys).sum() / total, (digit.sum(0) * xs).sum() / total
    top, left = round(CANVAS / 2 - 0.5 - float(com_y)), round(CANVAS / 2 - 0.5 - float(com_x))
    canvas = torch.zeros(CANVAS * 3, CANVAS * 3)     # room for any shift, then cut to 28x28
    canvas[CANVAS + top:CANVAS + top + shape[0], CANVAS + left:CANVAS + left + shape[1]] = digit
    return canvas[CANVAS:2 * CANVAS, CANVAS:2 * CANVAS]


def image_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The picture files among ``paths`` (folders are searched), and one problem per bad path."""
    files, problems = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS)
            files += found
            if not found:
                problems.append(f"{path}: no pictures in this folder "
                                f"({', '.join(sorted(EXTENSIONS))})")
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems
