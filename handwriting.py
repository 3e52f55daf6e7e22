"""Turn a photo, scan or drawing of one digit into a 28x28 image prepared the way MNIST was.

MNIST digits are light on dark, their longer side scaled to 20 px with antialiasing, placed in
28x28 with their centre of mass at the centre. People's pictures are dark ink on light paper,
large, off-centre, in colour, unevenly lit, with specks, or drawn on a transparent canvas.
``prepare`` bridges the two; ``show.py --image`` uses it.
"""
import glob
import warnings
from pathlib import Path
from typing import IO, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

import datasets

WORK_SIZE = 256          # pictures are shrunk to at most this before the analysis
SMALL_SIDE = 112         # smaller pictures are enlarged to this first: MNIST's side x 4
DIGIT_SIZE = 20          # MNIST's box for the digit's longer side
CANVAS = datasets.SIDE      # MNIST's image side
MIN_CONTRAST = 0.08      # ink this close to the background counts as no ink at all
PAPER_SMOOTHING = 8      # the paper's level is averaged over windows 1/8 the closing's
SHEET_AREA = 0.02        # a sheet covers at least this share of the picture (a slide's square)
SHEET_SOLIDITY = 0.9     # a sheet fills this much of its convex outline (its ink aside)
SHEET_FILL = 0.5         # and is mostly its own colour: a box drawn around a digit is no sheet
SHEET_COLOUR = 0.25      # a sheet of another colour than its surface differs by this
SHEET_TRIM = 0.03        # share of a found sheet's sides cut off: its rim, the desk beyond
SHEET_SURFACE = 0.9      # at least this much of the picture around a sheet is its surface
UPRIGHT_FILL = 0.98      # a region filling this much of its bounding box is an upright rectangle
STEP_PX = 3              # an image in a figure differs from the figure this far on either side
FIGURE_STEP = 0.3        # of its edge by this much (a lamp's light fading across a page: 0.002)
FRAMED = 0.3             # a region held in another's hole and this big against it: a frame
BESIDE_SIZE = 0.6        # a region apart from the digit and level with it, this big against
BESIDE_INK = 0.15        # it and with this share of its ink, is another digit beside it
UNDERLINE = 3            # a mark this many times as wide as it is high, under the digit,
UNDER_INK = 0.9          # with this share of the ink of the marks over it above its top
SOLID = 0.4              # strokes this wide against their mark's size make a blob; one cut by
                         # the picture's edge is a thumb holding the page
PEN = 6                  # a straight bar this many times as long as it is wide, PEN_LONGER as
PEN_LONGER = 1.5         # long as every mark of strokes with PEN_INK of its ink, and apart
PEN_INK = 0.1            # from one of them, is a pen (or a ruler) lying beside the digit
BOLD_STROKE = 0.2        # stroke width / digit size of MNIST's bold digits; bolder is worn
                         # down to it (stroked_as_mnist() says how it was measured)
FINE_STROKE = 0.1        # and of its finest digits; finer is drawn out to it
MAX_PIXELS = 50_000_000  # a picture's size as its header states it; a phone's is 12-50 MP
MAX_SIDE = 4000          # longer side kept after decoding: more detail than any digit needs
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic",
              ".heif"}
READABLE = "PNG, JPEG, HEIC, WebP, TIFF, BMP or GIF"      # the common ones, for messages


NO_DIGIT = "no digit found in the picture"


class ImageProblem(Exception):
    """The file is not a readable picture of a digit; the message says why."""


def open_image(file: str | Path | IO[bytes], name: str | None = None) -> Image.Image:
    """The picture in a file (a path or an open binary file, called ``name`` in messages)
    upright (EXIF orientation applied), fully decoded, at most MAX_SIDE pixels on a side.

    Its size is read from the header first: a small file can claim a huge picture, and one
    of over MAX_PIXELS is refused before it costs any memory. A JPEG is decoded straight at a
    reduced scale where that still leaves MAX_SIDE."""
    name = name or file
    too_large = f"pictures up to {MAX_PIXELS // 10**6} megapixels are read: make it smaller"
    register_heif_opener()      # an iPhone's photos are HEIC, which Pillow alone cannot open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # checked below
            image = Image.open(file)
        with image:
            image.draft(image.mode, (MAX_SIDE, MAX_SIDE))      # JPEG only; others ignore it
            if image.width * image.height > MAX_PIXELS:
                raise ImageProblem(f"{name} is {image.width} x {image.height} pixels; "
                                   f"{too_large}")
            image.load()
            if max(image.size) > MAX_SIDE:
                image = image.reduce(-(-max(image.size) // MAX_SIDE))
            return _eight_bit(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise ImageProblem(f"{name} is over {MAX_PIXELS // 10**6} megapixels; {too_large}"
                           ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # A system error (a folder, no permission) by its own words, without errno and path
        reason = (f"not a picture ({READABLE})" if isinstance(e, UnidentifiedImageError)
                  else e.strerror.lower() if isinstance(e, OSError) and e.strerror else str(e))
        raise ImageProblem(f"cannot read {name}: {reason}") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey (a scanner's PNG or TIFF) and grey in floats from 0 to 1 (a scientific
    TIFF) as 8-bit grey, and LAB as RGB: modes that Pillow converts well to the others. Its
    own conversion to 8 bits clips 16-bit levels above 255 to white and rounds floats below 1
    to black, and it converts LAB to nothing."""
    top = image.getextrema()[1] if image.mode in ("I", "F") else None
    if image.mode.startswith("I;16") or (image.mode == "I" and top > 255):
        return _grey(np.asarray(image).astype(np.float32) / 257)
    if image.mode == "F" and top <= 1:
        return _grey(np.asarray(image) * 255)
    if image.mode == "LAB":
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    return image


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(levels.round().clip(0, 255).astype(np.uint8))


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


def saturation(image: Image.Image) -> torch.Tensor:
    """How coloured each pixel is, in [0, 1] (HSV's saturation: a shadow leaves it as it is)."""
    if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return torch.zeros(image.height, image.width)
    # Pillow's arithmetic (a float quotient times 255, truncated: the same value for every
    # colour) on OpenCV's channel extremes; Pillow's HSV conversion took twice as long, a third
    # of a photo's preparation.
    red, green, blue = cv2.split(np.asarray(image.convert("RGB")))
    top = cv2.max(cv2.max(red, green), blue)
    spread = top - cv2.min(cv2.min(red, green), blue)
    quotient = spread.astype(np.float32) / np.maximum(top, 1).astype(np.float32)
    return torch.from_numpy((quotient * 255).astype(np.uint8)).float() / 255


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8
                            ).view(image.height, image.width).float() / 255


def _shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    scale = size / max(x.shape)
    if scale >= 1:
        return x
    shape = [max(1, round(s * scale)) for s in x.shape]
    return F.interpolate(x[None, None], size=shape, mode="area")[0, 0]


def _max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """The largest value in the k x k window (k odd) centred on each pixel (OpenCV's dilation:
    torch's stride-1 max_pool2d takes 50 times as long)."""
    return torch.from_numpy(cv2.dilate(x.numpy(), np.ones((k, k), np.uint8)))


def ink_on_dark(x: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Make the ink light on a dark background, with the paper's level and shading removed."""
    # Morphology with a window wider than any stroke erases the strokes and keeps the paper,
    # uneven light included; what differs from it is ink. The window is a sixth of the
    # picture unless the digit's size is known: a wider one would take shading near the
    # borders for ink, a narrower one the inside of bold strokes for paper.
    k = max(3, (window or max(x.shape) // 6) | 1)
    # The border is mostly paper; the ink is whichever side of it the extremes lie on. The
    # paper's level is the border's upper quartile: a shadow can only darken part of it. The
    # extremes are the outer 0.1 % of the pixels: a digit small on its page can cover under
    # 2 %, and coarser quantiles then see only paper and guess light ink.
    paper = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]]).quantile(0.75)
    darkest, lightest = x.quantile(torch.tensor([0.001, 0.999]))
    light_paper = paper - darkest > lightest - paper
    if light_paper:    # dark ink: light falls on paper and ink alike, so divide its level out
        return (1 - x / _paper(x, k).clamp(min=1e-3)).clamp(min=0)
    return (x + _paper(-x, k)).clamp(min=0)      # dark paper: the light paper of -x, negated


def _paper(x: torch.Tensor, k: int) -> torch.Tensor:
    """The light background of ``x`` with every darker feature narrower than k removed: a
    closing (the lightest value around each pixel, then the darkest of those), which keeps the
    sharp edge of a shadow where it is, lightly smoothed."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    paper = cv2.morphologyEx(x.numpy(), cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
    smooth = max(3, (k // PAPER_SMOOTHING) | 1)
    return torch.from_numpy(cv2.blur(paper, (smooth, smooth)))


def _otsu(x: torch.Tensor) -> float:
    """The threshold that best splits the values into two groups (Otsu, 1979), among 256
    levels from 0 to the largest value."""
    top = float(x.max())
    levels = (x / max(top, 1e-6) * 255).round().byte().numpy()
    threshold, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return threshold / 255 * top


def digit_mask(ink: torch.Tensor) -> torch.Tensor:
    """Where the digit is: the biggest stroke region plus parts of it, without stray specks,
    a frame around it, a line under it, a thumb at the edge or a pen beside it. Another digit
    beside it (a number) is an ``ImageProblem``."""
    full = _without_strays(ink > max(_otsu(ink), MIN_CONTRAST))
    # Regions are found on a grid of at most 64x64 cells: fast, and hairline gaps close.
    cell = -(-max(ink.shape) // 64)
    mask = F.max_pool2d(full.float()[None, None], cell, ceil_mode=True)[0, 0] > 0
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.numpy().astype(np.uint8),
                                                           connectivity=8)
    boxes = [(x, y, x + w - 1, y + h - 1, area) for x, y, w, h, area in stats[1:].tolist()]
    frames = _frames(labels, boxes)
    if len(frames) < len(boxes):        # rings within rings, and nothing else: no frames
        for frame in frames:
            boxes[frame - 1] = (0, 0, 0, 0, 0)
    if not boxes:                       # every mark was a stray: a thumb, a line, a pen
        raise ImageProblem(NO_DIGIT)
    digit = max(boxes, key=lambda box: box[4])
    left, top, right, bottom, biggest = digit

    def within(box, margin):
        return (box[0] >= left - margin and box[2] <= right + margin and
                box[1] >= top - margin and box[3] <= bottom + margin)

    # A part of the digit lies within it or close by and is not tiny (a stroke drawn apart);
    # a speck far away is dropped however big it is against a small digit.
    near = 0.5 * max(right - left, bottom - top) + 1
    kept = [label for label, box in enumerate(boxes, start=1)
            if within(box, max(mask.shape) * 0.05) or (box[4] >= 0.25 * biggest and
                                                       within(box, near))]
    if any(_beside(box, digit, mask.shape)
           for label, box in enumerate(boxes, start=1) if label not in kept):
        raise ImageProblem("several marks of a digit's size side by side: crop the picture "
                           "to one digit")
    keep = torch.from_numpy(np.isin(labels, kept))
    cells = keep.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return cells[:ink.shape[0], :ink.shape[1]] & full


def _without_strays(full: torch.Tensor) -> torch.Tensor:
    """``full`` (where the ink is) without the marks that belong to no digit: a line drawn
    under it, a thumb holding the page (a blob cut by the picture's edge), a pen beside it."""
    ink = full.numpy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    h, w = labels.shape
    left, top, width, height = (stats[:, i] for i in range(4))
    cut = (left == 0) | (top == 0) | (left + width == w) | (top + height == h)
    blobs = _blobs(ink, labels, stats)
    strays = _underlines(labels, stats) + [label for label in blobs if cut[label]]
    strays += _pens(labels, stats, cut, aside=strays + blobs)
    return full & ~torch.from_numpy(np.isin(labels, strays)) if strays else full


def _underlines(labels: np.ndarray, stats: np.ndarray) -> list[int]:
    """The flat marks that the ink of the marks over them (not flat) lies above. A line on its
    own, or under another line (an equals sign), is none."""
    count = len(stats)
    flat = [label for label in range(1, count)
            if stats[label, cv2.CC_STAT_WIDTH] >= UNDERLINE * stats[label, cv2.CC_STAT_HEIGHT]]
    rows = np.arange(labels.shape[0])[:, None]
    under = []
    for line in flat:
        left, top, width = stats[line, [cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH]]
        over = [label for label in range(1, count) if label not in flat and
                stats[label, cv2.CC_STAT_LEFT] < left + width and
                stats[label, cv2.CC_STAT_LEFT] + stats[label, cv2.CC_STAT_WIDTH] > left]
        ink = np.isin(labels, over)
        if ink.any() and (ink & (rows < top)).sum() >= UNDER_INK * ink.sum():
            under.append(line)
    return under


def _blobs(full: np.ndarray, labels: np.ndarray, stats: np.ndarray) -> list[int]:
    """The marks whose stroke width is at least SOLID of their size: blobs, not strokes
    (MNIST's boldest digits reach 0.28; stroked_as_mnist() says how it is measured)."""
    depth = np.bincount(labels.ravel(), weights=_depth(full).ravel(), minlength=len(stats))
    width = 4 * depth / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
    size = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    return [label for label in range(1, len(stats)) if width[label] >= SOLID * size[label]]


def _pens(labels: np.ndarray, stats: np.ndarray, cut: np.ndarray, aside: list[int]
          ) -> list[int]:
    """Pens (or rulers) lying beside the digit: straight bars (filling most of the rectangle
    around them, PEN times as long as wide), cut by the picture's edge or half its size long,
    PEN_LONGER times as long as every mark of strokes with PEN_INK of their ink and clear of
    one of them by twice their width. A 1 beside its own flag, a minus or a full stop is none.
    Marks ``aside`` (strays, blobs) and specks are neither bars nor strokes, and marks ``cut``
    by the edge no strokes: only a part of them shows."""
    bars, strokes = {}, {}       # label: (length, ink, width)
    for label, (left, top, width, height, area) in enumerate(stats[1:].tolist(), 1):
        if label in aside or max(width, height) < 8:
            continue
        mark = (labels[top:top + height, left:left + width] == label).astype(np.uint8)
        _, sides, _ = cv2.minAreaRect(cv2.findNonZero(mark))
        long, short = max(sides), max(min(sides), 1)
        straight = long >= PEN * short and area >= 0.75 * long * short
        if straight and (cut[label] or long >= max(labels.shape) / 2):
            bars[label] = long, area, short
        elif not cut[label]:
            strokes[label] = long, area, short
    pens = []
    for bar, (length, ink, short) in bars.items():
        others = [label for label, (_, area, _) in strokes.items() if area >= PEN_INK * ink]
        if not others or length < PEN_LONGER * max(strokes[label][0] for label in others):
            continue
        gap = cv2.distanceTransform((labels != bar).astype(np.uint8), cv2.DIST_L2, 3)
        if any(gap[labels == label].min() >= 2 * short for label in others):
            pens.append(bar)
    return pens


def _depth(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel outside ``mask``. Beyond the picture's edge
    is outside: a crop's own edge is an edge of the strokes (a stroke that fills the crop, such
    as a bar, has no other)."""
    inside = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]


def _beside(box: tuple, digit: tuple, shape: tuple[int, int]) -> bool:
    """Whether a region left out of the digit (``box``) is another digit beside it, as in a
    number of several: clear of the picture's edges (where shadows and desks end), level
    with the digit and apart from it, nearly as big and with ink enough."""
    left, top, right, bottom, area = box
    h, w = shape
    return (left > 0 and top > 0 and right < w - 1 and bottom < h - 1 and
            (right < digit[0] or left > digit[2]) and
            min(bottom, digit[3]) - max(top, digit[1]) >= 0.5 * (bottom - top) and
            max(right - left, bottom - top) >= BESIDE_SIZE * max(digit[2] - digit[0],
                                                                 digit[3] - digit[1]) and
            area >= BESIDE_INK * digit[4])


def _frames(labels: np.ndarray, boxes: list[tuple]) -> list[int]:
    """The labels of regions that frame others: a printed box or a circle drawn around the
    digit, whose hole holds a region at least FRAMED the frame's size. A speck inside a 0
    is too small to make it a frame."""
    frames = []
    for label, (left, top, right, bottom, _) in enumerate(boxes, start=1):
        inside = [other for other, (l, t, r, b, _) in enumerate(boxes, start=1)
                  if other != label and l > left and r < right and t > top and b < bottom and
                  max(r - l, b - t) + 1 >= FRAMED * max(right - left, bottom - top)]
        if not inside:
            continue
        # The frame's holes: what the background around the picture cannot reach through it
        outside = np.pad((labels != label).astype(np.uint8), 1)
        cv2.floodFill(outside, None, (0, 0), 2)
        holes = outside[1:-1, 1:-1] == 1
        if any(holes[labels == other].all() for other in inside):
            frames.append(label)
    return frames


def find_digit(x: torch.Tensor, window: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The picture's ink (light on dark) and where the digit is in it."""
    ink = ink_on_dark(x, window)
    if ink.max() < MIN_CONTRAST:
        raise ImageProblem(NO_DIGIT)
    return ink, digit_mask(ink)


def _corners(outline: np.ndarray) -> np.ndarray | None:
    """The four corners of a sheet's outline (top left, top right, bottom right, bottom left),
    or None when the outline is not close to a quadrilateral."""
    quad = cv2.approxPolyDP(outline, 0.04 * cv2.arcLength(outline, True), True)
    if len(quad) != 4 or cv2.contourArea(quad) < 0.9 * cv2.contourArea(outline):
        return None
    quad = quad.reshape(4, 2).astype(np.float32)
    total, difference = quad.sum(1), quad[:, 1] - quad[:, 0]
    # The least turn that makes the sheet upright: a sheet turned up to 45 degrees either way
    return quad[[total.argmin(), difference.argmin(), total.argmax(), difference.argmax()]]


def find_sheet(x: torch.Tensor, saturation: torch.Tensor) -> np.ndarray | None:
    """The corners of a sheet of paper (a page, a sticky note, a card) lying on a surface
    in a picture (its brightness ``x`` and colour ``saturation``), or None when the picture is
    all paper (or board) as far as can be told.

    A sheet is a region lighter or darker than its surroundings (paper on a desk; a board on a
    wall, or a digit shown light on dark inside a white page, as matplotlib's imshow shows one)
    or of another colour (a shadow changes the light, not the colour), nearly a quadrilateral,
    and mostly inside the photo: a region cut off by a shadow or by the photo's edges runs along
    those edges instead (an image in a figure saved without margins may too). Around it lies
    mostly its surface: where the rest is as light as the region, the region is paper cut off
    by strokes (a digit filling the picture from edge to edge), not a sheet.
    """
    candidates = [x, 1 - x]
    if saturation.max() - saturation.min() > SHEET_COLOUR:
        candidates += [saturation, 1 - saturation]
    best = None
    for channel in candidates:
        gray = cv2.GaussianBlur((channel.numpy() * 255).astype(np.uint8), (0, 0), 2)
        _, region = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        outlines, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not outlines:
            continue
        outline = max(outlines, key=cv2.contourArea)
        corners = _sheet_corners(outline, region, channel.numpy())
        if corners is not None and (best is None or cv2.contourArea(outline) > best[0]):
            best = cv2.contourArea(outline), corners
    return None if best is None else best[1]


def _sheet_corners(outline: np.ndarray, region: np.ndarray, channel: np.ndarray
                   ) -> np.ndarray | None:
    """The corners of ``outline`` if it can be a sheet's in a picture whose pixels of the
    sheet's side of the threshold are ``region`` (in the light or colour ``channel``)."""
    h, w = region.shape
    area = cv2.contourArea(outline)
    in_a_figure = _image_in_a_figure(outline, channel)
    if not SHEET_AREA * h * w < area < (1 if in_a_figure else 0.92) * h * w:
        return None
    points = outline.reshape(-1, 2)
    on_edge = ((points[:, 0] <= 1) | (points[:, 0] >= w - 2) |
               (points[:, 1] <= 1) | (points[:, 1] >= h - 2)).mean()
    if (on_edge > 0.5 and not in_a_figure) or \
            area < SHEET_SOLIDITY * cv2.contourArea(cv2.convexHull(outline)):
        return None
    inside = np.zeros_like(region)
    cv2.drawContours(inside, [outline], -1, 255, cv2.FILLED)
    if (region[inside > 0] > 0).mean() < SHEET_FILL:
        return None
    if (region[inside == 0] > 0).mean() > 1 - SHEET_SURFACE:     # paper, not its surface
        return None
    return _corners(cv2.convexHull(outline))   # a stroke running into its edge notches it


def _image_in_a_figure(outline: np.ndarray, channel: np.ndarray) -> bool:
    """Whether ``outline`` is an image in a figure saved without margins (matplotlib's
    savefig(bbox_inches="tight")): an upright rectangle up to the picture's edges but for a side
    or three (the title, the ticks), where it ends in a step. Light fading across a page splits
    it along a straight line too, but with no step there."""
    h, w = channel.shape
    left, top, width, height = cv2.boundingRect(outline)
    if cv2.contourArea(outline) < UPRIGHT_FILL * width * height:
        return False
    right, bottom, d = left + width - 1, top + height - 1, STEP_PX
    rows, cols = slice(top, bottom + 1), slice(left, right + 1)
    sides = [(channel[rows, left + d], channel[rows, left - d]) if left >= d else None,
             (channel[top + d, cols], channel[top - d, cols]) if top >= d else None,
             (channel[rows, right - d], channel[rows, right + d]) if right + d < w else None,
             (channel[bottom - d, cols], channel[bottom + d, cols]) if bottom + d < h else None]
    steps = [np.median(np.abs(inside - outside)) for inside, outside in filter(None, sides)]
    return bool(steps) and min(steps) > FIGURE_STEP


def flatten_sheet(picture: torch.Tensor, corners: np.ndarray) -> torch.Tensor:
    """The sheet at ``corners`` (in ``picture``'s pixels) warped to an upright rectangle, its
    edges trimmed so that neither the desk nor the sheet's own rim remains."""
    top, right, bottom, left = (np.linalg.norm(corners[i] - corners[(i + 1) % 4])
                                for i in range(4))
    width, height = max(2, round(max(top, bottom))), max(2, round(max(left, right)))
    target = np.float32([(0, 0), (width - 1, 0), (width - 1, height - 1), (0, height - 1)])
    flat = cv2.warpPerspective(picture.numpy(), cv2.getPerspectiveTransform(corners, target),
                               (width, height), flags=cv2.INTER_AREA)
    trim_y, trim_x = max(1, round(height * SHEET_TRIM)), max(1, round(width * SHEET_TRIM))
    return torch.from_numpy(np.ascontiguousarray(flat[trim_y:-trim_y, trim_x:-trim_x]))


def stroked_as_mnist(digit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``digit`` (its ink, cropped) with strokes bolder than MNIST's bold ones worn down to
    them (a small digit drawn with a wide pen: scaled to 20 px it would be a blob), or finer
    than MNIST's finest drawn out to them (a digit drawn large with a fine pen, or with a
    paint program's one-pixel pencil: scaled to 20 px it would all but vanish), and cropped
    again.

    A stroke's width is 4 x the mean distance of its pixels to its edge (for a band of width
    w, the distances run evenly from 0 to w/2). Measured so on MNIST's training digits enlarged
    4x (with the background around them): width / digit size 0.10 for the 1st percentile,
    0.15 for the median digit, 0.20 for the 90th percentile, 0.28 for the 99th."""
    inside = mask.numpy()
    if not inside.any():
        return digit
    width = 4 * _depth(inside)[inside].mean()
    side = max(mask.shape)
    limit = (BOLD_STROKE if width > BOLD_STROKE * side else
             FINE_STROKE if width < FINE_STROKE * side else None)
    if limit is None:
        return digit
    # Wearing r off each side of every stroke (or adding it) also changes the digit's size by
    # 2r: the width aimed at is the limit's share of the digit as it will be.
    r = round(abs(width - limit * side) / (2 * (1 - limit)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    if width > limit * side:
        changed = cv2.erode(digit.numpy(), kernel)
    else:
        changed = cv2.dilate(np.pad(digit.numpy(), r), kernel)    # room to grow into
    changed = torch.from_numpy(changed)
    rows, cols = (changed > MIN_CONTRAST).nonzero().unbind(1)
    if len(rows) == 0:
        return digit
    return changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def prepare(image: Image.Image) -> torch.Tensor:
    """A 28x28 tensor in [0, 1], light digit on black, sized and centred as in MNIST."""
    if max(image.size) < SMALL_SIDE:
        # A digit of a few pixels' strokes (MNIST's own 28x28 files): the analysis's windows
        # and stroke measures need more pixels than that (stroked_as_mnist() was measured on
        # MNIST enlarged 4x).
        scale = SMALL_SIDE / max(image.size)
        image = image.resize([max(1, round(side * scale)) for side in image.size],
                             Image.BICUBIC)
    picture = grayscale(image)
    x = _shrink(picture, WORK_SIZE)
    corners = find_sheet(x, _shrink(saturation(image), WORK_SIZE))
    if corners is not None:     # a photo of a sheet on a desk: the sheet alone, flattened
        sheet = flatten_sheet(picture, corners * (max(picture.shape) / max(x.shape)))
        flat = _shrink(sheet, WORK_SIZE)
        if flat.max() - flat.min() >= MIN_CONTRAST:
            picture, x = sheet, flat
        elif min(flat.shape) >= SOLID * max(flat.shape):    # a blank sheet, not a bar
            raise ImageProblem(NO_DIGIT)
        # else the "sheet" was the mark itself: a 1 drawn as a bar, light on black
    if x.max() - x.min() < MIN_CONTRAST:
        raise ImageProblem("the picture is blank")
    ink, keep = find_digit(x)
    rows, cols = keep.nonzero().unbind(1)
    # Look again around the digit: at the picture's own pixels (a digit small on a large page
    # lost its detail in the shrinking), with as much paper again on each side, and with a
    # window of half the digit's size, wider than any of its strokes.
    scale = max(picture.shape) / max(x.shape)
    side = int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
    top, left = [max(0, int((low - side) * scale)) for low in (rows.min(), cols.min())]
    bottom, right = [int((high + side + 1) * scale) for high in (rows.max(), cols.max())]
    around = picture[top:bottom, left:right]
    x = _shrink(around, WORK_SIZE)
    ink, keep = find_digit(x, window=round(side * scale * max(x.shape) / max(around.shape) / 2))
    rows, cols = keep.nonzero().unbind(1)
    # Strokes fade out at their edges: widen the kept area a little so the fade survives.
    ink = ink * _max_pool(keep.float(), 5)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    digit = stroked_as_mnist(ink[box], keep[box])
    digit = digit / digit.quantile(0.99).clamp(min=MIN_CONTRAST)    # MNIST strokes saturate
    return framed(digit)


def framed(digit: torch.Tensor) -> torch.Tensor:
    """A cropped digit (light on black, in [0, 1]) as MNIST frames one: its longer side scaled
    to 20 px, its centre of mass at the centre of 28x28."""
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
    for name in paths:
        path = Path(name)
        if "://" in name:       # Path would also fold its "//" into "/"
            problems.append(f"{name}: a web address; save the picture and pass the file")
        elif path.is_dir():
            found = _pictures(path.rglob("*"))
            files += found
            if not found:
                problems.append(f"{path}: no pictures in this folder "
                                f"({', '.join(sorted(EXTENSIONS))})")
        elif path.is_file():
            files.append(path)
        elif any(sign in name for sign in "*?["):    # Windows' shells pass *.jpg on as it is
            found = _pictures(map(Path, glob.glob(name, recursive=True)))
            files += found
            if not found:
                problems.append(f"{name}: no pictures match it")
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def _pictures(paths: Iterable[Path]) -> list[Path]:
    """The picture files among ``paths``, by their extension, in order."""
    return sorted(path for path in paths if path.suffix.lower() in EXTENSIONS and path.is_file())
