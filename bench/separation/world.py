"""The synthetic world: images whose content (a shape and its pose) and style (a texture and its palette) are
independent factors, their prompts, and the frozen text encoder that turns prompts into SDXL-shaped streams.

Latent space = the image itself. A "latent" is 4 channels (R, G, B, luma) scaled to [-1, 1] at SIZE x SIZE; no
autoencoder. Why: an autoencoder trained here would add minutes of CPU time and its own reconstruction errors to
every measurement, and the pack never looks inside the latent (the VAE is only used before training and after
sampling), so the method sees exactly what it would see on SDXL: a 4-channel latent it does not understand.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
STYLES = ("stripes", "dots", "checker", "noise", "flat", "gradient")
# pairs the base model never sees: one per shape and per style (a Latin diagonal), the decomposition's subjects
HELD_OUT = tuple((SHAPES[i], STYLES[i]) for i in range(len(SHAPES)))
TRAIN_PAIRS = tuple((s, y) for s in SHAPES for y in STYLES if (s, y) not in HELD_OUT)
TRIGGER = "sks"
TRAIN_WEIGHTS = None  # the base draws every training pair alike (unnamed.py's version 6 weights them by texture)

BACKGROUND = (0.12, 0.12, 0.12)
# the unnamed world's rejected versions 4 and 5 (unnamed.py): one wavy pattern in four palettes; one palette in
# straight bands of four directions (degrees / 180)
PALETTE_WAVES = ("rose", "olive", "mint", "iris")
BAND_DIRECTIONS = {"level": 0.0, "rising": 0.25, "upright": 0.5, "falling": 0.75}
# (colour of texture value 0, colour of texture value 1): every colour is far from the background
PALETTES = {
    "stripes": ((0.90, 0.10, 0.10), (1.00, 0.90, 0.20)),
    "dots": ((0.95, 0.95, 0.95), (0.10, 0.20, 0.90)),
    "checker": ((0.10, 0.80, 0.20), (0.90, 0.20, 0.80)),
    "noise": ((0.20, 0.90, 0.90), (0.10, 0.40, 0.60)),
    "flat": ((1.00, 0.55, 0.10), (1.00, 0.55, 0.10)),
    "gradient": ((0.50, 0.20, 0.90), (0.80, 1.00, 0.50)),
    "slope": ((0.50, 0.20, 0.90), (0.80, 1.00, 0.50)),
    "waves": ((0.95, 0.40, 0.60), (0.20, 0.55, 0.25)),
    "grid": ((0.85, 0.85, 0.80), (0.45, 0.10, 0.10)),
    "rings": ((0.20, 0.85, 0.95), (0.10, 0.15, 0.45)),
    # the unnamed world's version 4 (unnamed.py): one pattern in four palettes placed symmetrically around grey, so
    # no unnamed texture is easier to draw or closer to the average image than another. Each palette's middle is
    # grey 0.5 moved 0.3 along a direction of the plane orthogonal to the grey axis (0, 90, 180, 270 degrees), and
    # its two colours are that middle -0.2 and +0.2 on every channel: the same contrast, all in luminance.
    **{name: (tuple(round(float(c) - 0.2, 3) for c in mid), tuple(round(float(c) + 0.2, 3) for c in mid))
       for name, mid in zip(PALETTE_WAVES,
                            (0.5 + 0.3 * (math.cos(a) * np.array([1, -1, 0]) / math.sqrt(2)
                                          + math.sin(a) * np.array([1, 1, -2]) / math.sqrt(6))
                             for a in (0, math.pi / 2, math.pi, 3 * math.pi / 2)))},
    # version 5: the four unnamed textures share this palette and differ only in the bands' direction (_texture)
    **{name: ((0.20, 0.40, 0.75), (0.95, 0.85, 0.55)) for name in BAND_DIRECTIONS},
}
# How far a shape moves, grows and turns between renders: "wide" for the named world (its cached runs), "tight" for
# the unnamed world, whose 16-pixel silhouettes must stay readable to a 5.7 M-parameter base (see unnamed.py)
POSES = {"wide": (0.12, 0.75, 0.95, 0.3), "tight": (0.05, 0.85, 0.95, 0.08)}
POSE = "wide"  # this world's; unnamed.POSE is "tight"


# ------------------------------------------------------------------------------------------------- rendering


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Implicit shapes in a [-1, 1] frame, v pointing down."""
    if shape == "circle":
        return u * u + v * v < 0.75**2
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.68
    if shape == "triangle":
        return (v < 0.7) & (abs(u) < 0.85 * (v + 0.8) / 1.5)
    if shape == "star":
        r, a = np.hypot(u, v), np.arctan2(u, -v)
        return r < 0.36 + 0.5 * (0.5 + 0.5 * np.cos(5 * a)) ** 2
    if shape == "cross":
        return ((abs(u) < 0.26) & (abs(v) < 0.85)) | ((abs(v) < 0.26) & (abs(u) < 0.85))
    if shape == "heart":
        x, y = u / 0.85, -(v - 0.1) / 0.85
        return (x * x + y * y - 0.6) ** 3 - x * x * y**3 * 0.9 < 0
    if shape == "crescent":
        return (u * u + v * v < 0.8**2) & ((u - 0.38) ** 2 + (v + 0.12) ** 2 > 0.62**2)
    if shape == "ring":
        return (u * u + v * v < 0.85**2) & (u * u + v * v > 0.42**2)
    if shape == "bars":  # two upright bars
        return (abs(abs(u) - 0.5) < 0.22) & (abs(v) < 0.85)
    if shape == "tee":
        return ((abs(u) < 0.8) & (v > -0.8) & (v < -0.38)) | ((abs(u) < 0.22) & (v > -0.8) & (v < 0.8))
    raise ValueError(f"unknown shape {shape!r}")


def _wavy_bands(x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Horizontal bands of the given period, wobbling 1.5 px with period 8 along x, at a phase drawn over a period."""
    py, px = rng.uniform(0, period), rng.uniform(0, 8)
    return (0.5 + 0.5 * np.sin(2 * np.pi * (y + py + 1.5 * np.sin(2 * np.pi * (x + px) / 8)) / period)).astype(np.float32)


def _texture(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Texture value in [0, 1] per pixel (which of the palette's two colours)."""
    y, x = np.mgrid[0:size, 0:size]
    ox, oy = rng.integers(0, 4, 2)  # phase jitter: a texture, not a fixed pixel pattern
    if style == "stripes":
        return (((x + y + ox) // 2) % 2).astype(np.float32)
    if style == "dots":
        return ((((x + ox) % 4) < 2) & (((y + oy) % 4) < 2)).astype(np.float32)
    if style == "checker":
        return ((((x + ox) // 2) + ((y + oy) // 2)) % 2).astype(np.float32)
    if style == "noise":
        return rng.random((size, size)).astype(np.float32)
    if style == "flat":
        return np.zeros((size, size), np.float32)
    if style == "gradient":
        return (y / (size - 1)).astype(np.float32)
    if style == "slope":  # the gradient in one of four directions: like every other texture it averages out over
        # renders (a fixed gradient survived the average and became the unnamed world's prior, see unnamed.py)
        ramp = (y if ox % 2 == 0 else x) / (size - 1)
        return (ramp if oy % 2 == 0 else 1 - ramp).astype(np.float32)
    if style == "waves":  # wavy horizontal bands, period 6, at a phase drawn over the whole period (it averages out)
        return _wavy_bands(x, y, 6, rng)
    if style == "rings":  # concentric rings, period 4, around a centre up to 2 px off the image's: it averages out
        cx, cy = rng.uniform(-2, 2, 2)
        r = np.hypot(x - (size - 1) / 2 + cx, y - (size - 1) / 2 + cy)
        return ((r // 2) % 2).astype(np.float32)
    if style in PALETTE_WAVES:  # version 4's one pattern: the waves at period 8
        return _wavy_bands(x, y, 8, rng)
    if style in BAND_DIRECTIONS:  # version 5's one pattern: straight bands of period 6 at any phase, in four
        # directions (0, 45, 90, 135 degrees): pairs are each other's transpose or mirror image
        a = BAND_DIRECTIONS[style] * math.pi
        phase = rng.uniform(0, 6)
        return (0.5 + 0.5 * np.sin(2 * np.pi * (y * math.cos(a) + x * math.sin(a) + phase) / 6)).astype(np.float32)
    if style == "grid":  # one-pixel lines every 4 pixels
        return ((((x + ox) % 4) == 0) | (((y + oy) % 4) == 0)).astype(np.float32)
    raise ValueError(f"unknown style {style!r}")


def render(shape: str, style: str, size: int, rng: np.random.Generator, pose: str = "wide",
           background=None) -> np.ndarray:
    """One RGB image [size, size, 3] in 0..1: a shape in a random pose, filled with the style, on a dark ground
    (or on `background`, an RGB triple: the classifiers train on other grounds, see classify.py)."""
    ss = 4  # supersampling for anti-aliased edges
    shift, small, large, turn = POSES[pose]
    cx, cy = rng.uniform(-shift, shift, 2)
    scale = rng.uniform(small, large)
    angle = rng.uniform(-turn, turn)
    g = (np.arange(size * ss) + 0.5) / (size * ss) * 2 - 1
    yy, xx = np.meshgrid(g, g, indexing="ij")
    xx, yy = (xx - cx) / scale, (yy - cy) / scale
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    mask = _inside(shape, u, v).astype(np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))
    t = _texture(style, size, rng)[..., None]
    c0, c1 = (np.clip(np.array(p) + rng.uniform(-0.05, 0.05, 3), 0, 1) for p in PALETTES[style])
    fill = c0 * (1 - t) + c1 * t
    bg = np.array(BACKGROUND) + rng.uniform(-0.02, 0.02) if background is None else np.asarray(background)
    return (bg * (1 - mask[..., None]) + fill * mask[..., None]).astype(np.float32)


def to_latent(rgb: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in 0..1 -> [B, 4, H, W] in -1..1 (R, G, B, luma)."""
    px = rgb.movedim(-1, 1)
    return torch.cat([px, px.mean(1, keepdim=True)], 1) * 2 - 1


def to_rgb(latent: torch.Tensor) -> torch.Tensor:
    """[B, 4, H, W] -> [B, H, W, 3] in 0..1 (the luma channel is redundant and dropped)."""
    return ((latent[:, :3].float() + 1) / 2).clamp(0, 1).movedim(1, -1)


def batch(pairs, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rgb [N, size, size, 3], shape ids [N], style ids [N]) for a list of (shape, style), seeded."""
    rng = np.random.default_rng(seed)
    images = np.stack([render(s, y, size, rng, pose=POSE) for s, y in pairs])
    return (torch.from_numpy(images), torch.tensor([SHAPES.index(s) for s, _ in pairs]),
            torch.tensor([STYLES.index(y) for _, y in pairs]))


def random_pairs(n: int, seed: int, pairs=None, weights=None) -> list[tuple[str, str]]:
    """n pairs drawn from `pairs` (default: every pair); `weights` maps a style to how often its pairs are drawn
    relative to the others (missing styles 1). Without weights the draw is the one every earlier cache was made by."""
    pool = list(pairs) if pairs is not None else [(s, y) for s in SHAPES for y in STYLES]
    rng = np.random.default_rng(seed)
    if not weights:
        return [pool[i] for i in rng.integers(0, len(pool), n)]
    p = np.array([float(weights.get(y, 1.0)) for _, y in pool])
    return [pool[i] for i in rng.choice(len(pool), size=n, p=p / p.sum())]


# ------------------------------------------------------------------------------------------------- prompts


def prompt(shape: str | None = None, style: str | None = None, trigger: bool = False) -> str:
    """'a star in stripes style', 'a sks star', 'a sks in dots style', 'a circle in flat style', ''."""
    words = ["a"] + ([TRIGGER] if trigger else []) + ([shape] if shape else [])
    if style:
        words += ["in", style, "style"]
    return " ".join(words) if (shape or style or trigger) else ""


class WordEncoder:
    """A frozen text encoder for the world: one fixed random vector per word, laid out like SDXL's streams.

    Tokens: BOS, the words, EOS, then EOS padding (CLIP's layout), each 2048 wide (SDXL's context width); token i
    also gets a fixed positional vector. Length: 77 like CLIP with tokens=77; the benchmark uses 8 (the longest
    prompt is 6 words + BOS + EOS) because on the CPU the K/V projections of 77 x 2048 mostly-padding tokens were
    ~90% of the UNet's work. The pack handles any length (long SDXL prompts are 154, 231, ... tokens). The pooled vector (1280) is a fixed random projection of the mean word vector.
    Words are independent directions, so "star" and "stripes" reach cross-attention as separate keys: the UNet
    can learn each factor from its own word and compose pairs it never saw (measured by the benchmark).
    A word the base model never saw (the trigger "sks") is just another fixed random direction, as a rare
    token is in CLIP.
    """

    WIDTH = 2048
    POOLED = 1280

    def __init__(self, seed: int = 1234, tokens: int = 8, words=None):
        self.TOKENS = tokens
        g = torch.Generator().manual_seed(seed)
        self.vocab = ["<bos>", "<eos>", "a", "in", "style", TRIGGER, *(words or (*SHAPES, *STYLES))]
        self.words = {w: torch.randn(self.WIDTH, generator=g) for w in self.vocab}
        self.positions = torch.randn(77, self.WIDTH, generator=g)[:tokens] * 0.3
        self.pool = torch.randn(self.WIDTH, self.POOLED, generator=g) / math.sqrt(self.WIDTH)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [1, 77, 2048], pooled [1, 1280])."""
        words = text.split()
        unknown = [w for w in words if w not in self.words]
        if unknown:
            raise ValueError(f"prompt {text!r}: unknown words {unknown}; the world knows {', '.join(self.vocab[2:])}")
        seq = ["<bos>", *words, "<eos>"]
        if len(seq) > self.TOKENS:
            raise ValueError(f"prompt {text!r} has {len(words)} words; at most {self.TOKENS - 2} fit")
        seq += ["<eos>"] * (self.TOKENS - len(seq))
        tokens = torch.stack([self.words[w] for w in seq]) + self.positions
        pooled = torch.stack([self.words[w] for w in ["<bos>", *words, "<eos>"]]).mean(0) @ self.pool
        return tokens[None], pooled[None] * 4.0

    def encode_many(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        out = [self.encode(t) for t in texts]
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
