"""Content and style classifiers for the world: two small CNNs on RGB, trained on fresh renders of every pair
(classifiers may see held-out pairs: they measure factors, they are not the model under test), reported on
renders they never saw. Augmentation (random grounds, colour casts, soft edges, speckle, pixel noise) makes them
read a diffusion model's imperfect samples instead of keying on exact pixel values; whether they do is the hand
check's question (handcheck.py), asked on base samples a person labelled."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import world


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(64, classes))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:  # rgb [B, H, W, 3] in 0..1
        return self.body(rgb.movedim(-1, 1) * 2 - 1)


AUGMENT = "sample2"  # in the cache key: classifiers trained with another augmentation are not reused


def _renders(w, pairs, size: int, rng: np.random.Generator) -> torch.Tensor:
    # Half the renders on a random ground: the base's samples sit on grounds from dark brown to slate blue, and
    # classifiers that only ever saw the dark grey one read a light cross on slate as a circle (session 8's
    # hand-labelled samples, bench/separation/handcheck/).
    out = []
    for s, y in pairs:
        bg = rng.uniform(0.05, 0.55, 3) if rng.random() < 0.5 else None
        out.append(world.render(s, y, size, rng, pose=w.POSE, background=bg))
    return torch.from_numpy(np.stack(out))


def _augment(rgb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # a global colour cast (per image and channel: gain and offset): the base model's samples drift in colour at
    # this size, so the heads must read the texture and the shape, not exact colours
    n = rgb.shape[0]
    gain = 1 + (torch.rand(n, 1, 1, 3, generator=g) - 0.5) * 0.6
    offset = (torch.rand(n, 1, 1, 3, generator=g) - 0.5) * 0.4
    cast = torch.rand(n, 1, 1, 1, generator=g) < 0.7
    rgb = torch.where(cast, rgb * gain + offset, rgb)
    # soft edges: the base's silhouettes are a pixel wider and blurrier than the renders'
    px = rgb.movedim(-1, 1)
    soft = F.avg_pool2d(F.pad(px, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(n, 1, 1, 1, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) < 0.5)
    rgb = (px * (1 - amount) + soft * amount).movedim(1, -1)
    # speckle: sampling leaves saturated single-pixel colours over part of many images (the look grids)
    speckle = torch.rand(rgb.shape, generator=g)
    where = torch.rand(n, *rgb.shape[1:3], 1, generator=g) < torch.rand(n, 1, 1, 1, generator=g)
    weight = torch.rand(n, 1, 1, 1, generator=g) * 0.6 * (torch.rand(n, 1, 1, 1, generator=g) < 0.4)
    rgb = torch.where(where, rgb * (1 - weight) + speckle * weight, rgb)
    noise = torch.randn(rgb.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.08
    return (rgb + noise).clamp(0, 1)


def train(size: int, steps: int, seed: int = 0, log=print, w=world) -> tuple[dict, dict]:
    """({'content': model, 'style': model}, accuracy on 600 held-out renders per head); w: the world module."""
    torch.manual_seed(seed)
    models = {"content": SmallCNN(len(w.SHAPES)), "style": SmallCNN(len(w.STYLES))}
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-3) for k, m in models.items()}
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        pairs = w.random_pairs(64, seed=10_000 + step)
        rgb = _augment(_renders(w, pairs, size, np.random.default_rng(20_000 + step)), g)
        shape_ids = torch.tensor([w.SHAPES.index(s) for s, _ in pairs])
        style_ids = torch.tensor([w.STYLES.index(y) for _, y in pairs])
        for name, labels in (("content", shape_ids), ("style", style_ids)):
            loss = F.cross_entropy(models[name](rgb), labels)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
    for m in models.values():
        m.eval()
    rgb, shape_ids, style_ids = w.batch(w.random_pairs(600, seed=999_999), size, seed=999_998)
    acc = {}
    with torch.no_grad():
        acc["content"] = float((models["content"](rgb).argmax(1) == shape_ids).float().mean())
        acc["style"] = float((models["style"](rgb).argmax(1) == style_ids).float().mean())
        cast = _augment(rgb, torch.Generator().manual_seed(999_997))  # the same renders, colour-cast and noised
        acc["content_cast"] = float((models["content"](cast).argmax(1) == shape_ids).float().mean())
        acc["style_cast"] = float((models["style"](cast).argmax(1) == style_ids).float().mean())
        for name, x in (("", rgb), ("_cast", cast)):  # with the reject option: unreadable counts as wrong
            (ps, cs), (py, cy) = read(models, x)
            acc["content_read" + name] = float(((ps == shape_ids) & (cs >= REJECT_BELOW)).float().mean())
            acc["style_read" + name] = float(((py == style_ids) & (cy >= REJECT_BELOW)).float().mean())
            acc["unreadable" + name] = float(((cs < REJECT_BELOW) | (cy < REJECT_BELOW)).float().mean())
    acc["seconds"] = round(time.time() - t0, 1)
    acc["test_images"] = 600
    log(f"[classifiers] held-out accuracy content {acc['content']:.3f} style {acc['style']:.3f}; colour-cast "
        f"{acc['content_cast']:.3f} / {acc['style_cast']:.3f} ({acc['seconds']} s)")
    return models, acc


def load_or_train(size: int, steps: int, cache, log=print, w=world) -> tuple[dict, dict]:
    tag = "" if w is world else f"_{w.NAME}" + (f"v{w.VERSION}" if getattr(w, "VERSION", 1) != 1 else "")
    path = cache / f"classifiers{tag}_size{size}_steps{steps}_{AUGMENT}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        models = {"content": SmallCNN(len(w.SHAPES)), "style": SmallCNN(len(w.STYLES))}
        for k, m in models.items():
            m.load_state_dict(state[k])
            m.eval()
        return models, json.loads(state["accuracy"])
    models, acc = train(size, steps, log=log, w=w)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({**{k: m.state_dict() for k, m in models.items()}, "accuracy": json.dumps(acc)}, path)
    return models, acc


@torch.no_grad()
def predict(models: dict, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape ids, style ids) for [B, H, W, 3]."""
    return models["content"](rgb).argmax(1), models["style"](rgb).argmax(1)


# Reject option: a head whose top class has less than this probability reads the image as "unreadable", which the
# study counts as a failure of whatever was asked (and reports). Fixed before any run, not tuned on results.
REJECT_BELOW = 0.6


@torch.no_grad()
def read(models: dict, rgb: torch.Tensor):
    """((shape ids, shape confidence), (style ids, style confidence)) for [B, H, W, 3]; confidence = top softmax."""
    out = []
    for name in ("content", "style"):
        prob = models[name](rgb.float()).softmax(1)
        conf, ids = prob.max(1)
        out.append((ids, conf))
    return tuple(out)
