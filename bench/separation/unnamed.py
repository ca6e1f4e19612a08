"""The second world (`--world unnamed`, the default): subjects made of factors the captions never name.

Eight shapes and eight textures, rendered by world.render (tight poses). Four of each have words ("circle", "stripes"); the other
four are seen by the base model only as "a shape" and "in pattern style". A subject of the decomposition is one
unnamed shape in one unnamed texture (4 x 4 = 16 subjects), so the prompts are the paper's:

    combined "a sks shape in pattern style"   content "a sks shape"   style "a shape in pattern style"

and no word tells the base which shape or which texture: what the LoRAs carry, they learned from the image. The
named factors are the recontextualisation targets ("a sks shape in stripes style", "a circle in pattern style").
The base sees every pair but the named diagonal (circle/stripes, square/dots, ...), which is kept to test that it
composes named pairs it never saw together.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import world

NAME = "unnamed"
# Version 2 (session 6): the first version's base (4000 steps) drew textures right and shapes as blobs: star and
# heart differ from circle and square only at their edges, which 16 pixels and a small base blur away, and the
# "noise" texture is indistinguishable from a sampler's leftover noise. Its gates failed (composition 0.00, the
# unnamed prior collapsed on "heart"), so no claim was testable. Version 2 keeps the design and changes what the
# base must draw: unnamed shapes that differ in coarse layout (a ring's hole, two bars, a tee, a crescent), a
# structured texture for "noise", and tighter poses.
# Version 3 (session 7): version 2's base composed named pairs (0.72) but "a shape in pattern style" came out in
# the gradient texture in 0.41-0.66 of images at every guidance scale, cfg 1 included (bench.separation.prior_cfg).
# The other unnamed textures are phase-jittered, so their average over renders is flat grey; the gradient was the
# same in every render, so it survived the average a denoiser predicts at high noise and sampling committed to it.
# Version 3 changes only that, for every unnamed texture: "slope" is the gradient in one of four directions, and
# "rings" are centred up to 2 px off and "waves" take any phase of their period (averaged over 400 renders, rings kept
# 75 % of one render's contrast and waves 29 %; now every unnamed texture keeps at most 12 %). The gate rules stay
# as they were.
# Version 4 (session 9): v3's prior still drew slope in 0.69 of "a shape in pattern style" images, and the base's
# loss per texture followed the same order as the prior's shares (slope fit best, rings worst and never drawn):
# the base draws the unnamed texture it fits best. No choice of four different patterns can be shown equal in
# advance, so version 4 makes them equal by construction: the four unnamed textures are one pattern (wavy bands of
# period 8 at any phase) in four palettes placed symmetrically around grey with the same contrast (world.PALETTES).
# A texture is then its colours, as a style is largely its palette; no texture is easier to draw or nearer the
# average image than another. Shapes, named factors and the gate rules are unchanged. Registered before its base
# was trained; its prediction: the prior's largest texture falls under the 0.5 rule.
# Version 4 was rejected at its gates, before any LoRA run: the base does not draw a colour from the prompt. From
# zero-mean start noise every free sample regresses to one average colour (a pink-to-peach continuum a person can
# name in 7 of 48 images), and from plain noise the colour follows the noise's mean (colour_drift.py). Its prior
# gate "passed" on the classifier's reading of that drift (bench/RESULTS.md).
# Version 5 (session 9): texture identity lives in the pattern, never in the colour. The four unnamed textures share
# one palette and one pattern (straight bands of period 6 at any phase) and differ only in direction (0, 45, 90,
# 135 degrees), so they are equal in difficulty up to transposition and mirroring, and the start noise's mean
# cannot choose one. Registered before its base was trained; its prediction: the prior's largest texture is under
# 0.5 and a person can name the direction in most readable free samples.
# Version 5 was rejected at its gates too, before any LoRA run: its prior drew one direction (by hand every
# nameable texture of the prior's samples was "level", 17 of 17; the classifiers read "rising" 0.72), and on the
# base's blurred samples the classifiers disagreed with a person on direction (texture 43/53 = 0.81 < 0.95).
# Version 6 (session 10): version 3's renders, shapes, textures and gate rules, with one change to the base's
# training data only. A model that matched its data would draw "a shape in pattern style" as the data's mixture of
# the four textures, even under guidance (the caption is the same for all four, so guidance favours none); this one
# draws the texture it fits best (slope, 0.69) and never the one it fits worst (rings, loss 0.0316 against 0.0170):
# too few rings for its size. So its training pairs in an unnamed texture are drawn in proportion to how hard v3's
# base found them (TRAIN_WEIGHTS: rings 1.5, waves and grid 1, slope 0.5, averaging 1, so named pairs keep their
# share). The classifiers, the probes and the LoRA runs see v3's uniform world. Registered before its base was
# trained; predictions: the prior's largest texture is under 0.5, and rings are drawn.
# Version 6 was rejected at its gates, before any LoRA run: the unnamed prior left slope (0.69 -> 0.25) but went to
# the named "dots" (0.59 of "a shape in pattern style", 0.91 with "sks"): the extra blue-on-light rings came out as
# the named texture the base draws best in those colours, and rings were still never drawn (0 of 32 by the
# classifiers, 0 of 48 by hand). Only 0.38 of its images read as an unnamed shape in an unnamed texture (rule 0.8).
# So the default stays version 3, the world with a complete run; UNZIPLORA_SEPARATION_WORLD=4, 5 or 6 selects a
# rejected version, to repeat its gates (bench/RESULTS.md).
V3_TEXTURES = ("rings", "slope", "waves", "grid")
VERSIONS = {3: V3_TEXTURES, 4: world.PALETTE_WAVES, 5: tuple(world.BAND_DIRECTIONS), 6: V3_TEXTURES}
# how often the base's training draws pairs in each unnamed texture, relative to the rest (uniform when absent)
TRAIN_WEIGHTS_BY_VERSION = {6: {"rings": 1.5, "waves": 1.0, "grid": 1.0, "slope": 0.5}}
VERSION = int(os.environ.get("UNZIPLORA_SEPARATION_WORLD", "3"))
if VERSION not in VERSIONS:
    raise SystemExit(f"UNZIPLORA_SEPARATION_WORLD={VERSION}: the unnamed world has versions {sorted(VERSIONS)}")
POSE = "tight"
NAMED_SHAPES = ("circle", "square", "triangle", "cross")
UNNAMED_SHAPES = ("ring", "bars", "crescent", "tee")
NAMED_STYLES = ("stripes", "dots", "checker", "flat")
UNNAMED_STYLES = VERSIONS[VERSION]
TRAIN_WEIGHTS = TRAIN_WEIGHTS_BY_VERSION.get(VERSION)
SHAPES = NAMED_SHAPES + UNNAMED_SHAPES  # the classifiers' classes
STYLES = NAMED_STYLES + UNNAMED_STYLES
SHAPE_WORD, STYLE_WORD = "shape", "pattern"  # what the base is told about an unnamed factor
TRIGGER = world.TRIGGER
HELD_OUT = tuple((NAMED_SHAPES[i], NAMED_STYLES[i]) for i in range(len(NAMED_SHAPES)))  # named, never captioned
TRAIN_PAIRS = tuple((s, y) for s in SHAPES for y in STYLES if (s, y) not in HELD_OUT)
SUBJECTS = tuple((s, y) for s in UNNAMED_SHAPES for y in UNNAMED_STYLES)
VOCAB = (SHAPE_WORD, STYLE_WORD, *NAMED_SHAPES, *NAMED_STYLES)

prompt = world.prompt
to_latent, to_rgb = world.to_latent, world.to_rgb


def words(shape: str | None, style: str | None) -> tuple[str | None, str | None]:
    """The caption words of a (shape, style): its name if it has one, else "shape" / "pattern"."""
    sw = None if shape is None else (shape if shape in NAMED_SHAPES else SHAPE_WORD)
    yw = None if style is None else (style if style in NAMED_STYLES else STYLE_WORD)
    return sw, yw


def caption(shape: str | None, style: str | None, trigger: bool = False) -> str:
    return prompt(*words(shape, style), trigger=trigger)


def batch(pairs, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = np.stack([world.render(s, y, size, rng, pose=POSE) for s, y in pairs])
    return (torch.from_numpy(images), torch.tensor([SHAPES.index(s) for s, _ in pairs]),
            torch.tensor([STYLES.index(y) for _, y in pairs]))


def random_pairs(n: int, seed: int, pairs=None, weights=None) -> list[tuple[str, str]]:
    return world.random_pairs(n, seed, pairs=[(s, y) for s in SHAPES for y in STYLES] if pairs is None else pairs,
                              weights=weights)


def encoder(tokens: int = 8) -> world.WordEncoder:
    return world.WordEncoder(seed=4321, tokens=tokens, words=VOCAB)


def partner(subject: tuple[str, str]) -> tuple[str, str]:
    """The subject whose style crosses with this one's content: the next shape and the next texture, so the
    crossed pair shares neither factor with either training image."""
    s, y = subject
    return (UNNAMED_SHAPES[(UNNAMED_SHAPES.index(s) + 1) % 4], UNNAMED_STYLES[(UNNAMED_STYLES.index(y) + 1) % 4])
