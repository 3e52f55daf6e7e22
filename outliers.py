"""Pictures that hold no digit, drawn as a pen draws: letters, signs, shapes, faces, scribbles,
zigzags.

Outlier exposure (Hendrycks et al. 2019): mixed into the training digits with the label
``engine.NO_CLASS``, each is trained towards no class at all (the uniform distribution over the
ten), so that the network itself learns that an A is not a 4. A network that has only seen
digits reads an upright A, H or Y as a sure 4, and no score computed from its layers tells them
apart (docs/trust.md). Only what no one writes for a digit is drawn here: no O, I, S, Z, b, g
or q, and no lone circle or stroke.
"""
import math
import random

import torch
from PIL import Image, ImageDraw

import handwriting

PAD = 112         # drawn on a square pad of this side, then framed as MNIST frames a digit

# Strokes on a square from -1 to 1 (y downwards): each a polyline the pen draws in one go
LETTERS = {
    "A": [[(-0.5, 0.9), (0, -0.9), (0.5, 0.9)], [(-0.3, 0.3), (0.3, 0.3)]],
    "E": [[(0.5, -0.9), (-0.5, -0.9), (-0.5, 0.9), (0.5, 0.9)], [(-0.5, 0), (0.3, 0)]],
    "F": [[(0.5, -0.9), (-0.5, -0.9), (-0.5, 0.9)], [(-0.5, 0), (0.3, 0)]],
    "H": [[(-0.5, -0.9), (-0.5, 0.9)], [(0.5, -0.9), (0.5, 0.9)], [(-0.5, 0), (0.5, 0)]],
    "K": [[(-0.5, -0.9), (-0.5, 0.9)], [(0.5, -0.9), (-0.5, 0.2)], [(-0.2, -0.05), (0.5, 0.9)]],
    "M": [[(-0.7, 0.9), (-0.6, -0.9), (0, 0.3), (0.6, -0.9), (0.7, 0.9)]],
    "N": [[(-0.5, 0.9), (-0.5, -0.9), (0.5, 0.9), (0.5, -0.9)]],
    "R": [[(-0.45, 0.9), (-0.45, -0.9), (0.2, -0.85), (0.45, -0.5), (0.2, -0.1), (-0.45, -0.05),
           (0.5, 0.9)]],
    "U": [[(-0.5, -0.9), (-0.45, 0.5), (0, 0.9), (0.45, 0.5), (0.5, -0.9)]],
    "V": [[(-0.6, -0.9), (0, 0.9), (0.6, -0.9)]],
    "W": [[(-0.9, -0.9), (-0.45, 0.9), (0, -0.4), (0.45, 0.9), (0.9, -0.9)]],
    "X": [[(-0.6, -0.8), (0.6, 0.8)], [(0.6, -0.8), (-0.6, 0.8)]],
    "Y": [[(-0.6, -0.9), (0, 0), (0.6, -0.9)], [(0, 0), (0, 0.9)]],
    "k": [[(-0.4, -0.9), (-0.4, 0.9)], [(0.4, -0.1), (-0.4, 0.45), (0.4, 0.9)]],
    "h": [[(-0.4, -0.9), (-0.4, 0.9)], [(-0.4, 0.2), (0, -0.1), (0.4, 0.2), (0.4, 0.9)]],
    "m": [[(-0.8, 0.9), (-0.8, -0.2)], [(-0.8, 0), (-0.4, -0.3), (0, 0), (0, 0.9)],
          [(0, 0), (0.4, -0.3), (0.8, 0), (0.8, 0.9)]],
    "#": [[(-0.2, -0.9), (-0.3, 0.9)], [(0.35, -0.9), (0.25, 0.9)], [(-0.8, -0.35), (0.8, -0.35)],
          [(-0.8, 0.35), (0.8, 0.35)]],
    "+": [[(0, -0.8), (0, 0.8)], [(-0.8, 0), (0.8, 0)]],
    "*": [[(0, -0.8), (0, 0.8)], [(-0.7, -0.4), (0.7, 0.4)], [(0.7, -0.4), (-0.7, 0.4)]],
    "=": [[(-0.8, -0.3), (0.8, -0.3)], [(-0.8, 0.3), (0.8, 0.3)]],
    "?": [[(-0.5, -0.5), (-0.3, -0.85), (0.2, -0.9), (0.5, -0.6), (0.4, -0.25), (0, 0), (0, 0.4)],
          [(0, 0.85), (0, 0.9)]],
    "&": [[(0.6, 0.9), (-0.3, -0.3), (-0.35, -0.75), (0, -0.9), (0.3, -0.7), (0.1, -0.35),
           (-0.5, 0.2), (-0.45, 0.75), (0, 0.9), (0.4, 0.6), (0.6, 0.2)]],
}


def _circle(cx: float, cy: float, r: float, start: float = 0, end: float = 2 * math.pi,
            points: int = 24) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + (end - start) * i / points),
             cy + r * math.sin(start + (end - start) * i / points)) for i in range(points + 1)]


SHAPES = {
    "triangle": [[(0, -0.8), (0.8, 0.7), (-0.8, 0.7), (0, -0.8)]],
    "square": [[(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7), (-0.7, -0.7)]],
    "star": [[(math.sin(4 * math.pi * i / 5) * 0.9, -math.cos(4 * math.pi * i / 5) * 0.9)
              for i in range(6)]],
    "arrow": [[(-0.9, 0), (0.9, 0)], [(0.4, -0.5), (0.9, 0), (0.4, 0.5)]],
    "face": [_circle(0, 0, 0.9), [(-0.35, -0.3), (-0.35, -0.25)], [(0.35, -0.3), (0.35, -0.25)],
             _circle(0, 0.05, 0.5, 0.2 * math.pi, 0.8 * math.pi, 8)],
    "crossed box": [[(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7), (-0.7, -0.7)],
                    [(-0.7, -0.7), (0.7, 0.7)], [(0.7, -0.7), (-0.7, 0.7)]],
}


def _scribble(rng: random.Random) -> list[list[tuple[float, float]]]:
    """A tangle: a smooth path that turns back on itself many times."""
    a, b, c = (rng.uniform(0.15, 0.45) for _ in range(3))
    return [[(0.9 * math.cos(a * i) * math.cos(c * i), 0.9 * math.sin(b * i))
             for i in range(rng.randint(30, 70))]]


def _zigzag(rng: random.Random) -> list[list[tuple[float, float]]]:
    """A zigzag of five to eight strokes, across or down (fewer could be a Z, that is a 2)."""
    turns = rng.randint(6, 9)
    points = [((1 if i % 2 else -1) * rng.uniform(0.5, 0.9), -0.9 + 1.8 * i / (turns - 1))
              for i in range(turns)]
    return [points if rng.random() < 0.5 else [(y, x) for x, y in points]]


def _strokes(rng: random.Random) -> list[list[tuple[float, float]]]:
    kind = rng.random()
    if kind < 0.6:
        return rng.choice(list(LETTERS.values()))
    if kind < 0.8:
        return rng.choice(list(SHAPES.values()))
    return _scribble(rng) if kind < 0.9 else _zigzag(rng)


def drawing(rng: random.Random, strokes: list | None = None) -> torch.Tensor:
    """One picture with no digit, 28x28 in [0, 1], light on black, framed as MNIST's digits:
    a figure (``strokes``, or one drawn at random) turned a little, sheared, squashed and
    wobbled, in a pen of MNIST's widths."""
    angle, shear = math.radians(rng.uniform(-15, 15)), rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
    cos, sin = math.cos(angle), math.sin(angle)
    half = PAD * 0.4
    width = rng.uniform(0.08, 0.2) * 2 * half      # thin to MNIST's bold (handwriting.py)

    def place(x: float, y: float) -> tuple[float, float]:
        x, y = (x + rng.uniform(-0.08, 0.08)) * sx, (y + rng.uniform(-0.08, 0.08)) * sy
        x += shear * y
        return PAD / 2 + half * (cos * x - sin * y), PAD / 2 + half * (sin * x + cos * y)

    pad = Image.new("L", (PAD, PAD), 0)
    draw = ImageDraw.Draw(pad)
    for stroke in strokes or _strokes(rng):
        points = [place(x, y) for x, y in stroke]
        draw.line(points, fill=255, width=round(width), joint="curve")
        for x, y in (points[0], points[-1]):        # the pen's round ends
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    ink = torch.frombuffer(bytearray(pad.tobytes()), dtype=torch.uint8).view(PAD, PAD)
    rows, cols = ink.nonzero().unbind(1)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1].float() / 255
    return handwriting.framed(crop)


def drawings(n: int, seed: int) -> torch.Tensor:
    """``n`` pictures with no digit (n x 28 x 28, uint8, as MNIST's files hold them), the same
    for the same seed."""
    rng = random.Random(seed)
    if n == 0:
        return torch.zeros(0, handwriting.CANVAS, handwriting.CANVAS, dtype=torch.uint8)
    return (torch.stack([drawing(rng) for _ in range(n)]) * 255).round().to(torch.uint8)
