"""Pictures that hold no digit, as people send them to a digit reader: noise, textures, letters,
shapes, scribbles, a dot, a line, a face, a word. ``nondigit_set`` draws a fixed-seed set.

Letters that are written like digits (O, I, l, S, Z ...) are left out: no reader of digits can
tell them apart, and a person who draws one expects the digit. docs/trust.md has the figures.
"""
import math
import random
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts"), Path(matplotlib.get_data_path()) / "fonts" / "ttf")
LETTERS = "ACEFHKMNPRTUVWXYacefhkmnprtuvwxy#%&@?!*"
WORDS = ["hello", "cat", "Hi!", "ok", "yes", "MNIST", "abc", "wow", "pen"]
SIZE = 280                    # the drawing page's pad


def fonts() -> list[Path]:
    """Text fonts on this machine (matplotlib's at least), in a fixed order."""
    found = sorted(p for d in FONT_DIRS if d.exists() for p in d.rglob("*.ttf"))
    return [p for p in found if not p.name.startswith(("cmex", "cmsy", "DejaVuMath", "STIX"))]


def _pad(rng, dark_on_light=True):
    background = rng.randint(215, 255) if dark_on_light else rng.randint(0, 40)
    return Image.new("L", (SIZE, SIZE), background), (0 if dark_on_light else 255)


def _pen(rng):
    return rng.randint(6, 24)


def _noise(rng):
    nprng = np.random.default_rng(rng.randrange(2**32))
    return Image.fromarray((nprng.random((SIZE, SIZE)) * 255).astype(np.uint8))


def _texture(rng):
    nprng = np.random.default_rng(rng.randrange(2**32))
    x = Image.fromarray((nprng.random((SIZE // 4, SIZE // 4)) * 255).astype(np.uint8))
    return x.resize((SIZE, SIZE), Image.BICUBIC).filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))


def _stripes(rng):
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    angle = rng.uniform(0, math.pi)
    wave = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) / rng.uniform(3, 12))
    return Image.fromarray(((wave > rng.uniform(-0.3, 0.3)) * 200 + 30).astype(np.uint8))


def _checks(rng):
    cell = rng.randint(10, 50)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return Image.fromarray((((ys // cell + xs // cell) % 2) * 220 + 20).astype(np.uint8))


def _letter(rng, text=None):
    page, ink = _pad(rng, rng.random() < 0.8)
    font = ImageFont.truetype(str(rng.choice(fonts())), rng.randint(120, 220))
    ImageDraw.Draw(page).text((SIZE / 2, SIZE / 2), text or rng.choice(LETTERS), fill=ink,
                              font=font, anchor="mm")
    return page


def _word(rng):
    page, ink = _pad(rng)
    font = ImageFont.truetype(str(rng.choice(fonts())), rng.randint(50, 90))
    ImageDraw.Draw(page).text((SIZE / 2, SIZE / 2), rng.choice(WORDS), fill=ink, font=font,
                              anchor="mm")
    return page


def _shape(rng):
    page, ink = _pad(rng, rng.random() < 0.8)
    draw = ImageDraw.Draw(page)
    c, r = SIZE / 2 + rng.uniform(-30, 30), rng.uniform(50, 120)
    kind = rng.choice(["square", "filled square", "triangle", "star", "heart", "filled disc",
                       "cross", "arrow", "hexagon"])
    width = _pen(rng)
    if kind in ("square", "filled square"):
        box = [c - r, c - r, c + r, c + r]
        draw.rectangle(box, fill=ink if kind == "filled square" else None, outline=ink,
                       width=width)
    elif kind == "filled disc":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=ink)
    elif kind in ("triangle", "hexagon", "star"):
        n = {"triangle": 3, "hexagon": 6, "star": 10}[kind]
        points = [(c + (r if i % 2 or kind != "star" else r / 2.5) * math.cos(2 * math.pi * i / n),
                   c + (r if i % 2 or kind != "star" else r / 2.5) * math.sin(2 * math.pi * i / n))
                  for i in range(n)]
        draw.polygon(points, outline=ink, width=width, fill=ink if rng.random() < 0.3 else None)
    elif kind == "heart":
        t = np.linspace(0, 2 * math.pi, 60)
        xs = 16 * np.sin(t) ** 3
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        draw.polygon(list(zip(c + xs * r / 17, c + ys * r / 17)), fill=ink)
    elif kind == "cross":
        draw.line([c - r, c - r, c + r, c + r], fill=ink, width=width)
        draw.line([c - r, c + r, c + r, c - r], fill=ink, width=width)
    else:
        draw.line([c - r, c, c + r, c], fill=ink, width=width)
        draw.line([c + r / 2, c - r / 2, c + r, c, c + r / 2, c + r / 2], fill=ink, width=width,
                  joint="curve")
    return page


def _scribble(rng):
    page, ink = _pad(rng)
    x, y = rng.uniform(80, 200), rng.uniform(80, 200)
    heading, points = rng.uniform(0, 2 * math.pi), []
    for _ in range(rng.randint(40, 120)):
        heading += rng.uniform(-1.2, 1.2)
        x = min(max(x + 12 * math.cos(heading), 30), SIZE - 30)
        y = min(max(y + 12 * math.sin(heading), 30), SIZE - 30)
        points.append((x, y))
    ImageDraw.Draw(page).line(points, fill=ink, width=_pen(rng), joint="curve")
    return page


def _dot(rng):
    page, ink = _pad(rng)
    c, r = rng.uniform(60, 220), rng.uniform(6, 20)
    ImageDraw.Draw(page).ellipse([c - r, c - r, c + r, c + r], fill=ink)
    return page


def _line(rng):
    """A straight stroke that is not upright (an upright one is a 1)."""
    page, ink = _pad(rng)
    angle = rng.choice([rng.uniform(-30, 30), rng.uniform(150, 210)])
    length, c = rng.uniform(80, 220), SIZE / 2
    dx, dy = length / 2 * math.cos(math.radians(angle)), length / 2 * math.sin(math.radians(angle))
    ImageDraw.Draw(page).line([c - dx, c - dy, c + dx, c + dy], fill=ink, width=_pen(rng))
    return page


def _face(rng):
    page, ink = _pad(rng)
    draw, w = ImageDraw.Draw(page), _pen(rng)
    draw.ellipse([40, 40, 240, 240], outline=ink, width=w)
    for x in (105, 175):
        draw.ellipse([x - 12, 100, x + 12, 124], fill=ink)
    draw.arc([85, 120, 195, 200], 20, 160, fill=ink, width=w)
    return page


def _hatching(rng):
    page, ink = _pad(rng)
    draw, gap, w = ImageDraw.Draw(page), rng.randint(14, 30), rng.randint(3, 8)
    for offset in range(-SIZE, SIZE, gap):
        draw.line([offset, 0, offset + SIZE, SIZE], fill=ink, width=w)
        if rng.random() < 0.5:
            draw.line([offset + SIZE, 0, offset, SIZE], fill=ink, width=w)
    return page


# Letters as a pen draws them on the page: strokes on a 280 x 280 pad
STROKES = {"A": [[(80, 240), (140, 40), (200, 240)], [(105, 165), (175, 165)]],
           "E": [[(200, 40), (90, 40), (90, 240), (200, 240)], [(90, 140), (180, 140)]],
           "F": [[(200, 40), (90, 40), (90, 240)], [(90, 140), (180, 140)]],
           "H": [[(80, 40), (80, 240)], [(200, 40), (200, 240)], [(80, 140), (200, 140)]],
           "K": [[(90, 40), (90, 240)], [(200, 40), (90, 150), (200, 240)]],
           "M": [[(60, 240), (70, 40), (140, 160), (210, 40), (220, 240)]],
           "N": [[(80, 240), (80, 40), (200, 240), (200, 40)]],
           "R": [[(90, 240), (90, 40), (180, 50), (190, 100), (180, 140), (90, 140),
                  (200, 240)]],
           "W": [[(50, 40), (95, 240), (140, 100), (185, 240), (230, 40)]],
           "X": [[(70, 50), (210, 230)], [(210, 50), (70, 230)]],
           "Y": [[(70, 40), (140, 140), (210, 40)], [(140, 140), (140, 240)]],
           "#": [[(100, 40), (90, 240)], [(180, 40), (170, 240)], [(50, 100), (230, 100)],
                 [(50, 180), (230, 180)]]}
PEN = 23                      # the drawing page's pen on its pad


def draw_letter(page: Image.Image, ink: int, letter: str, place) -> Image.Image:
    """``letter`` of STROKES drawn on ``page`` with the page's pen, each point moved by
    ``place(x, y)``."""
    draw = ImageDraw.Draw(page)
    for stroke in STROKES[letter]:
        points = [place(x, y) for x, y in stroke]
        draw.line(points, fill=ink, width=PEN, joint="curve")
        for x, y in (points[0], points[-1]):        # the pen's round ends
            draw.ellipse([x - PEN / 2, y - PEN / 2, x + PEN / 2, y + PEN / 2], fill=ink)
    return page


def upright_letter(letter: str) -> Image.Image:
    """``letter`` as a person draws it on the page to try it: upright, filling the pad."""
    return draw_letter(Image.new("L", (SIZE, SIZE), 255), 0, letter, lambda x, y: (x, y))


def _drawn_letter(rng):
    """A letter drawn with the page's pen, at some size and place, each point a little off."""
    page, ink = _pad(rng)
    scale = rng.uniform(0.4, 1.0)
    left, top = rng.uniform(0, SIZE * (1 - scale)), rng.uniform(0, SIZE * (1 - scale))
    return draw_letter(page, ink, rng.choice(list(STROKES)),
                       lambda x, y: (left + scale * (x + rng.uniform(-12, 12)),
                                     top + scale * (y + rng.uniform(-12, 12))))


KINDS = {"noise": _noise, "blurred texture": _texture, "stripes": _stripes,
         "checkerboard": _checks, "letter or sign": _letter, "word": _word, "shape": _shape,
         "scribble": _scribble, "dot": _dot, "line": _line, "smiley": _face,
         "hatching": _hatching, "drawn letter": _drawn_letter}


def nondigit_set(per_kind: int = 20, seed: int = 0) -> list[tuple[str, Image.Image]]:
    rng = random.Random(seed)
    return [(kind, make(rng)) for kind, make in KINDS.items() for _ in range(per_kind)]
