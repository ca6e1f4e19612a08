"""A procedurally drawn 'sketch of a cat' for the main job and the tests (no downloaded images)."""

from __future__ import annotations

import argparse
import math
import random

from PIL import Image, ImageDraw


def make_sketch(width: int = 512, height: int = 512, seed: int = 0) -> Image.Image:
    """Black pencil-like strokes of a sitting cat on warm paper: a recognisable subject and a clear style."""
    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height), (246, 240, 226))
    d = ImageDraw.Draw(img)
    s = min(width, height) / 512
    cx, cy = width / 2, height / 2 + 40 * s

    def stroke(points, w=3):
        for _ in range(3):  # three jittered passes look hand drawn
            jit = [(x + rnd.uniform(-2, 2) * s, y + rnd.uniform(-2, 2) * s) for x, y in points]
            d.line(jit, fill=(30, 28, 26), width=max(1, int(w * s)), joint="curve")

    def ellipse(x0, y0, rx, ry, n=48):
        return [(x0 + rx * math.cos(2 * math.pi * k / n), y0 + ry * math.sin(2 * math.pi * k / n)) for k in range(n + 1)]

    stroke(ellipse(cx, cy + 40 * s, 120 * s, 140 * s))  # body
    stroke(ellipse(cx, cy - 120 * s, 80 * s, 70 * s))  # head
    stroke([(cx - 70 * s, cy - 150 * s), (cx - 60 * s, cy - 220 * s), (cx - 25 * s, cy - 180 * s)])  # ears
    stroke([(cx + 70 * s, cy - 150 * s), (cx + 60 * s, cy - 220 * s), (cx + 25 * s, cy - 180 * s)])
    for ex in (-30, 30):
        stroke(ellipse(cx + ex * s, cy - 130 * s, 9 * s, 12 * s, 16), 2)  # eyes
    for side in (-1, 1):
        for k in range(3):
            y = cy - 105 * s + k * 8 * s
            stroke([(cx + side * 20 * s, y), (cx + side * 95 * s, y - 10 * s + k * 10 * s)], 1)  # whiskers
    stroke([(cx + 110 * s, cy + 140 * s), (cx + 190 * s, cy + 60 * s), (cx + 170 * s, cy - 20 * s)], 4)  # tail
    for k in range(40):  # hatching: the style
        x = cx - 110 * s + k * 6 * s
        stroke([(x, cy + 120 * s), (x + 30 * s, cy + 60 * s)], 1)
    return img


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    make_sketch(a.size, a.size).save(a.out)
    print(a.out)
