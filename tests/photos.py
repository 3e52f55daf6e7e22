"""Photographs of handwritten digits made the way people take them, for the preparation's tests.

The handwriting is real: MNIST test digits, enlarged into smooth strokes. Each kind puts them on
paper and in front of a camera differently (a sticky note on a desk, a hard shadow, lined paper,
chalk, a sideways phone photo ...); ``photo_set`` draws a fixed-seed set of every kind.
docs/trust.md describes the kinds and what the shipped model reads of them.
"""
import io
import math
import random

import cv2
import numpy as np
from PIL import Image

INK = {"ballpoint": (0.12, 0.14, 0.35), "pencil": (0.35, 0.35, 0.37), "black": (0.05,) * 3,
       "red": (0.75, 0.1, 0.12), "blue": (0.1, 0.25, 0.75), "green": (0.1, 0.5, 0.2)}
PAPERS = {"white": (0.95, 0.95, 0.93), "yellow note": (0.98, 0.93, 0.45),
          "pink": (0.98, 0.75, 0.82), "blue": (0.7, 0.85, 0.97), "green": (0.75, 0.95, 0.7),
          "orange": (0.99, 0.7, 0.4)}


def strokes(digit: np.ndarray, side: int, width: float = 1.0) -> np.ndarray:
    """An MNIST digit (28x28 uint8) as ink coverage in [0, 1], ``side`` pixels square, with
    strokes ``width`` times as thick as the original's."""
    x = cv2.resize(digit.astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_CUBIC)
    if width != 1.0:
        k = max(1, round(abs(width - 1) * side / 14)) | 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        x = cv2.dilate(x, kernel) if width > 1 else cv2.erode(x, kernel)
    return np.clip((x - 0.25) / 0.5, 0, 1)      # crisp edges, as a pen's


def fine_pen(digit: np.ndarray, side: int, pen: int) -> np.ndarray:
    """An MNIST digit (28x28 uint8) redrawn along the middle of its strokes with a pen ``pen``
    pixels wide, ``side`` pixels square: True where the ink is."""
    mask = (cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC) > 100)
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    middle = (depth > 0) & (depth >= cv2.dilate(depth, np.ones((3, 3), np.uint8)) - 0.5)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (pen, pen))
    return cv2.dilate(middle.astype(np.uint8), kernel) > 0


def desk(rng: random.Random, shape: tuple[int, int], kind: str) -> np.ndarray:
    """A surface to lay paper on: dark wood, a grey desk or a patterned cloth (RGB)."""
    h, w = shape
    nprng = np.random.default_rng(rng.randrange(2**32))
    if kind == "wood":
        base = np.array(rng.choice([(0.35, 0.22, 0.12), (0.25, 0.17, 0.1), (0.45, 0.3, 0.18)]))
        y = np.arange(h)[:, None] + 8 * np.sin(np.arange(w)[None, :] / rng.uniform(20, 60))
        grain = 0.85 + 0.15 * np.sin(y / rng.uniform(2, 6)) + nprng.normal(0, 0.03, (h, w))
        return base * grain[..., None]
    if kind == "cloth":        # checked tablecloth, light: little contrast with the paper
        cell = rng.randint(12, 30)
        check = ((np.arange(h)[:, None] // cell + np.arange(w)[None, :] // cell) % 2)
        colour = np.array(rng.choice([(0.8, 0.3, 0.3), (0.3, 0.4, 0.8), (0.5, 0.6, 0.5)]))
        return colour * (0.7 + 0.3 * check[..., None]) + nprng.normal(0, 0.02, (h, w, 1))
    grey = rng.uniform(0.25, 0.6)
    return np.full((h, w, 3), grey) + nprng.normal(0, 0.02, (h, w, 1))


def page(rng: random.Random, digit: np.ndarray, size: tuple[int, int], paper: str = "white",
         ink: str = "ballpoint", ruling: str | None = None, width: float = 1.0,
         share: tuple[float, float] = (0.35, 0.7)) -> np.ndarray:
    """A sheet ``size`` (w, h) of ``paper`` with the digit written on it (RGB in [0, 1])."""
    w, h = size
    sheet = np.empty((h, w, 3))
    sheet[:] = PAPERS[paper]
    if ruling == "lined":
        gap = rng.randint(h // 12, h // 7)
        sheet[rng.randrange(gap)::gap] = (0.55, 0.7, 0.9)
        margin = rng.randint(w // 12, w // 6)
        sheet[:, margin:margin + 2] = (0.9, 0.4, 0.4)
    elif ruling == "squared":
        gap = rng.randint(min(w, h) // 20, min(w, h) // 10)
        sheet[rng.randrange(gap)::gap] = (0.6, 0.72, 0.85)
        sheet[:, rng.randrange(gap)::gap] = (0.6, 0.72, 0.85)
    side = round(rng.uniform(*share) * min(w, h))
    coverage = strokes(digit, side, width)
    if ink == "pencil":     # graphite leaves grainy, light strokes
        grain = np.random.default_rng(rng.randrange(2**32)).uniform(0.4, 1.0, coverage.shape)
        coverage = coverage * grain * rng.uniform(0.45, 0.7)
    top = rng.randint(h // 10, max(h // 10, h - side - h // 10))
    left = rng.randint(w // 10, max(w // 10, w - side - w // 10))
    a = coverage[..., None]
    region = sheet[top:top + side, left:left + side]
    region[:] = region * (1 - a) + np.array(INK[ink]) * a
    return sheet


def lay_on(rng: random.Random, sheet: np.ndarray, surface: np.ndarray,
           fill: tuple[float, float]) -> np.ndarray:
    """The sheet photographed lying on ``surface``: a random quadrilateral (a tilted, turned
    sheet seen in perspective) covering ``fill`` of the photo's width."""
    h, w = surface.shape[:2]
    sh, sw = sheet.shape[:2]
    scale = rng.uniform(*fill) * w / sw
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    angle = math.radians(rng.uniform(-25, 25))
    corners = []
    for x, y in [(-sw / 2, -sh / 2), (sw / 2, -sh / 2), (sw / 2, sh / 2), (-sw / 2, sh / 2)]:
        x, y = x * scale * rng.uniform(0.9, 1.1), y * scale * rng.uniform(0.9, 1.1)
        corners.append((cx + x * math.cos(angle) - y * math.sin(angle),
                        cy + x * math.sin(angle) + y * math.cos(angle)))
    source = np.float32([(0, 0), (sw, 0), (sw, sh), (0, sh)])
    matrix = cv2.getPerspectiveTransform(source, np.float32(corners))
    warped = cv2.warpPerspective(sheet.astype(np.float32), matrix, (w, h))
    mask = cv2.warpPerspective(np.ones((sh, sw), np.float32), matrix, (w, h))[..., None]
    shade = rng.uniform(0.8, 1.0)       # the desk's light on the paper
    return surface * (1 - mask) + warped * mask * shade


def shadow(rng: random.Random, x: np.ndarray, share: tuple[float, float] = (0.33, 0.5),
           depth: tuple[float, float] = (0.35, 0.6)) -> np.ndarray:
    """A hard shadow (a hand, a phone) over ``share`` of the photo, from one side, with a
    straight or gently curved edge."""
    h, w = x.shape[:2]
    ys, xs = np.ogrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * math.pi)
    along = (xs - w / 2) * math.cos(angle) + (ys - h / 2) * math.sin(angle)
    across = -(xs - w / 2) * math.sin(angle) + (ys - h / 2) * math.cos(angle)
    along = along + rng.uniform(-0.002, 0.002) * across ** 2       # a curved edge
    cut = np.quantile(along, 1 - rng.uniform(*share))
    soft = rng.uniform(1, 4)
    dark = 1 / (1 + np.exp(-(along - cut) / soft))
    return x * (1 - rng.uniform(*depth) * dark)[..., None]


def camera(rng: random.Random, x: np.ndarray, noise: float = 0.01, blur: float = 0.0,
           vignette: float = 0.0) -> np.ndarray:
    h, w = x.shape[:2]
    if vignette:
        ys, xs = np.ogrid[0:h, 0:w]
        r = np.hypot((xs - rng.uniform(0.3, 0.7) * w) / w, (ys - rng.uniform(0.3, 0.7) * h) / h)
        x = x * (1 - vignette * np.clip(r / 0.8, 0, 1) ** 2)[..., None]
    if blur:
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), blur)
    x = x + noise * np.random.default_rng(rng.randrange(2**32)).standard_normal(x.shape)
    return np.clip(x, 0, 1, out=x)


def encoded(x: np.ndarray, kind: str = "JPEG", quality: int = 85, exif: Image.Exif | None = None
            ) -> bytes:
    levels = np.clip(x, 0, 1) * 255
    picture = Image.fromarray(np.round(levels, out=levels).astype(np.uint8))
    buffer = io.BytesIO()
    options = {"quality": quality} if kind == "JPEG" else {}
    if exif is not None:
        options["exif"] = exif
    picture.save(buffer, kind, **options)
    return buffer.getvalue()


def phone_size(rng: random.Random) -> tuple[int, int]:
    return rng.choice([(640, 480), (480, 640), (800, 600), (600, 800)])


def _sticky_note(rng, digit):
    w, h = phone_size(rng)
    note = page(rng, digit, (300, 300), paper=rng.choice(["yellow note", "pink", "green"]),
                ink=rng.choice(["ballpoint", "black"]))
    return encoded(camera(rng, lay_on(rng, note, desk(rng, (h, w), "wood"), (0.3, 0.55))))


def _sheet_on_desk(rng, digit):
    w, h = phone_size(rng)
    sheet = page(rng, digit, (420, 594), share=(0.3, 0.6))
    surface = desk(rng, (h, w), rng.choice(["wood", "grey"]))
    return encoded(camera(rng, lay_on(rng, sheet, surface, (0.45, 0.7)), blur=0.6))


def _card_on_cloth(rng, digit):
    w, h = phone_size(rng)
    card = page(rng, digit, (400, 260), share=(0.5, 0.8))
    return encoded(camera(rng, lay_on(rng, card, desk(rng, (h, w), "cloth"), (0.4, 0.65))))


def _note_on_desk_in_shadow(rng, digit):
    w, h = phone_size(rng)
    note = page(rng, digit, (300, 300), paper="yellow note")
    x = lay_on(rng, note, desk(rng, (h, w), "grey"), (0.35, 0.6))
    return encoded(camera(rng, shadow(rng, x, share=(0.2, 0.4))))


def _hard_shadow(rng, digit):
    x = shadow(rng, page(rng, digit, phone_size(rng)))
    return encoded(camera(rng, x, blur=0.5))


def _coloured_paper(rng, digit):
    paper = rng.choice(["yellow note", "pink", "blue", "green", "orange"])
    x = page(rng, digit, phone_size(rng), paper=paper, ink=rng.choice(["black", "ballpoint"]))
    return encoded(camera(rng, x))


def _lined_paper(rng, digit):
    return encoded(camera(rng, page(rng, digit, phone_size(rng), ruling="lined"), blur=0.5))


def _squared_paper(rng, digit):
    return encoded(camera(rng, page(rng, digit, phone_size(rng), ruling="squared"), blur=0.5))


def _pencil(rng, digit):
    x = page(rng, digit, phone_size(rng), ink="pencil")
    return encoded(camera(rng, x, blur=0.7, vignette=0.3))


def _chalk(rng, digit):
    w, h = phone_size(rng)
    board = np.array(rng.choice([(0.12, 0.3, 0.2), (0.15, 0.15, 0.16)]))
    nprng = np.random.default_rng(rng.randrange(2**32))
    x = board * (0.85 + 0.3 * nprng.random((h, w, 1)))
    x += 0.12 * cv2.GaussianBlur(nprng.random((h, w)).astype(np.float32), (0, 0), 25)[..., None]
    side = round(rng.uniform(0.4, 0.7) * min(w, h))
    coverage = strokes(digit, side, width=1.3) * nprng.uniform(0.5, 1, (side, side))
    top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    region = x[top:top + side, left:left + side]
    region[:] = region * (1 - coverage[..., None]) + 0.9 * coverage[..., None]
    return encoded(camera(rng, x, blur=0.8))


def _marker(rng, digit):
    x = page(rng, digit, phone_size(rng), ink=rng.choice(["red", "blue", "green"]), width=1.8)
    return encoded(camera(rng, x))


def _perspective(rng, digit):
    w, h = phone_size(rng)
    sheet = page(rng, digit, (w, h), share=(0.4, 0.6))
    # Seen from a slant: the page still fills the photo, the digit is squeezed on one side.
    d = rng.uniform(0.1, 0.25)
    source = np.float32([(0, 0), (w, 0), (w, h), (0, h)])
    target = np.float32([(0, 0), (w, 0), (w, h), (0, h)])
    side = rng.randrange(4)
    target[side] += ((d * w, 0) if side in (0, 3) else (-d * w, 0))
    target[(side + 1) % 4] += ((d * w, 0) if (side + 1) % 4 in (0, 3) else (-d * w, 0))
    matrix = cv2.getPerspectiveTransform(source, target)
    warped = cv2.warpPerspective(sheet.astype(np.float32), matrix, (w, h),
                                 borderMode=cv2.BORDER_REPLICATE)
    return encoded(camera(rng, warped))


def _dim_and_noisy(rng, digit):
    x = page(rng, digit, phone_size(rng)) * rng.uniform(0.3, 0.5)
    return encoded(camera(rng, x, noise=0.04), quality=50)


def _uneven_light(rng, digit):
    x = page(rng, digit, phone_size(rng))
    return encoded(camera(rng, x, vignette=rng.uniform(0.5, 0.7)))


def _glare(rng, digit):
    w, h = phone_size(rng)
    x = page(rng, digit, (w, h), paper=rng.choice(["white", "blue", "pink"])) * 0.8
    ys, xs = np.ogrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.3) * min(w, h)
    x = x + 0.4 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
    return encoded(camera(rng, x))


def _motion_blur(rng, digit):
    x = page(rng, digit, phone_size(rng), width=1.3)
    length = rng.randint(5, 11)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1 / length
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5),
                                       rng.uniform(0, 180), 1)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    x = cv2.filter2D(x.astype(np.float32), -1, kernel / kernel.sum())
    return encoded(camera(rng, x))


def _sideways(rng, digit):
    x = camera(rng, page(rng, digit, phone_size(rng)))
    turn, tag = rng.choice([(cv2.ROTATE_90_COUNTERCLOCKWISE, 6), (cv2.ROTATE_180, 3),
                            (cv2.ROTATE_90_CLOCKWISE, 8)])
    exif = Image.Exif()
    exif[0x0112] = tag         # how the viewer must turn the stored pixels to show them upright
    return encoded(cv2.rotate(x, turn), exif=exif)


def _tiny(rng, digit):
    size = rng.randint(28, 64)
    x = cv2.resize(page(rng, digit, (200, 200), share=(0.6, 0.8)).astype(np.float32),
                   (size, size), interpolation=cv2.INTER_AREA)
    return encoded(camera(rng, x, noise=0.005), kind="PNG")


def _thin_pen_big_page(rng, digit):
    x = page(rng, digit, (1200, 1600), share=(0.15, 0.3), ink="black", width=0.6)
    return encoded(camera(rng, x, blur=0.8))


SKIN = [(0.95, 0.8, 0.7), (0.87, 0.67, 0.55), (0.76, 0.55, 0.42), (0.55, 0.38, 0.26)]


def _thumb(rng, digit):
    """The page held up to the camera: a thumb reaches in over one edge."""
    w, h = phone_size(rng)
    x = page(rng, digit, (w, h), share=(0.3, 0.5))
    reach, half_width = rng.uniform(0.15, 0.3) * min(w, h), rng.uniform(0.08, 0.15) * min(w, h)
    side = rng.choice(["left", "right", "bottom"])
    if side == "bottom":
        centre, angle = (rng.uniform(0.2, 0.8) * w, h), 90 + rng.uniform(-30, 30)
    else:
        centre = (0 if side == "left" else w, rng.uniform(0.5, 0.9) * h)
        angle = rng.uniform(-30, 30)
    thumb = np.zeros((h, w), np.float32)
    cv2.ellipse(thumb, tuple(map(round, centre)), (round(reach), round(half_width)), angle, 0,
                360, 1, -1)
    thumb = cv2.GaussianBlur(thumb, (0, 0), 3)[..., None]
    x = x * (1 - thumb) + np.array(rng.choice(SKIN)) * rng.uniform(0.7, 1.0) * thumb
    return encoded(camera(rng, x, blur=0.5))


PENS = [(0.1, 0.1, 0.12), (0.15, 0.2, 0.6), (0.7, 0.1, 0.1), (0.8, 0.8, 0.82)]


def _pen_beside(rng, digit):
    """The pen that wrote the digit left lying on the page, clear of it (10 px or more)."""
    w, h = phone_size(rng)
    x = page(rng, digit, (w, h), share=(0.25, 0.4))
    rows, cols = np.nonzero(x.mean(2) < 0.6)        # the digit: dark ink on white paper
    clear = (slice(max(0, rows.min() - 10), rows.max() + 11),
             slice(max(0, cols.min() - 10), cols.max() + 11))
    length, width = rng.uniform(0.5, 0.9) * max(w, h), rng.uniform(0.03, 0.05) * min(w, h)
    for _ in range(50):
        centre, angle = (rng.uniform(0, w), rng.uniform(0, h)), rng.uniform(0, math.pi)
        ends = [(round(centre[0] + side * length / 2 * math.cos(angle)),
                 round(centre[1] + side * length / 2 * math.sin(angle))) for side in (-1, 1)]
        pen = np.zeros((h, w), np.uint8)
        cv2.line(pen, *ends, 1, max(2, round(width)), cv2.LINE_AA)
        if not pen[clear].any():
            break
    pen = cv2.GaussianBlur(pen.astype(np.float32), (0, 0), 1.5)[..., None]
    x = x * (1 - pen) + np.array(rng.choice(PENS)) * pen
    return encoded(camera(rng, x, blur=0.5))


def _screenshot(rng, digit):
    """A drawing app's export: flat colours, no camera at all, sometimes a dark theme."""
    dark = rng.random() < 0.5
    size = rng.choice([(400, 400), (1080, 1080)])
    coverage = strokes(digit, round(0.7 * size[0]), width=rng.uniform(1, 2))
    x = np.zeros((size[1], size[0]))
    o = round(0.15 * size[0])
    x[o:o + coverage.shape[0], o:o + coverage.shape[1]] = coverage
    x = x if dark else 1 - x
    return encoded(np.repeat(x[..., None], 3, 2), kind="PNG")


KINDS = {
    "sticky note on a wooden desk": _sticky_note, "sheet on a desk": _sheet_on_desk,
    "card on a checked tablecloth": _card_on_cloth, "note on a desk, in shadow":
    _note_on_desk_in_shadow, "hard shadow across the page": _hard_shadow,
    "coloured paper": _coloured_paper, "lined paper": _lined_paper,
    "squared paper": _squared_paper, "pencil": _pencil, "chalk on a board": _chalk,
    "coloured marker": _marker, "page seen at a slant": _perspective,
    "dim light, noisy JPEG": _dim_and_noisy, "uneven light": _uneven_light, "glare": _glare,
    "motion blur": _motion_blur, "sideways (EXIF)": _sideways, "tiny file": _tiny,
    "thin pen, big page": _thin_pen_big_page, "drawing app export": _screenshot,
    "held in the hand, a thumb over the edge": _thumb, "a pen lying beside it": _pen_beside,
}


def photo_set(images, labels, per_kind: int = 20, seed: int = 0
              ) -> list[tuple[str, int, bytes]]:
    """``per_kind`` photos of every kind: (kind, digit, file bytes), MNIST test digits drawn
    from ``images``/``labels`` by a fixed seed."""
    rng = random.Random(seed)
    cases = []
    for kind, make in KINDS.items():
        for _ in range(per_kind):
            i = rng.randrange(len(labels))
            cases.append((kind, int(labels[i]), make(rng, images[i].numpy())))
    return cases
