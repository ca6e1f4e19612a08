"""Gates of the unnamed-world study, each computed on the base model before any LoRA is judged, and the per-block
specialisation diagnostic. Results are cached next to the units (one JSON per gate).

    classifiers  held-out renders read right with the reject option (unreadable = wrong), clean and colour-cast; and
                 the base's own samples read as a person labelled them (handcheck.py)
    composition  the base draws named pairs it never saw together ("a circle in stripes style")
    prior        "a shape in pattern style" (and with "sks") spreads over the unnamed factors: no built-in subject
    blocks       feed one block's cross-attention another named prompt: does the shape or the texture follow?
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch

from . import stats
from . import unnamed as W
from .classify import REJECT_BELOW, read
from .experiment import sample

GATE_CLASSIFIER = 0.95  # read right (reject counted wrong) on clean held-out renders, each head
GATE_COMPOSITION = 0.5  # both factors right on named pairs the base never saw together
GATE_PRIOR_MAX = 0.5  # no unnamed shape / texture takes more than half of "a shape in pattern style"
GATE_PRIOR_OBEYS = 0.8  # and at least this many of its images are read as unnamed shape and unnamed texture
GATE_RECREATE = 0.2  # a mode's "both" recreation beats the base's by at least this (lower 95 % bound, paired)
SPECIALISED = 0.25  # a block carries a factor when its swap moves that factor this much more than the other


def conditioning_batch(clip, texts):
    """One conditioning whose batch holds a prompt per image (ComfyUI keeps a cond batch equal to the latent's)."""
    enc = [clip.encoder.encode(t) for t in texts]
    tokens, pooled = torch.cat([e[0] for e in enc]), torch.cat([e[1] for e in enc])
    return [[tokens, {"pooled_output": pooled, "width": clip.px, "height": clip.px}]]


def sample_texts(model, clip, texts, scfg, size, seed):
    scfg = replace(scfg, per_prompt=len(texts))
    return sample(model, conditioning_batch(clip, texts), conditioning_batch(clip, [""] * len(texts)), size, scfg, seed)


def classifier_gate(acc: dict, models: dict) -> dict:
    """Renders (acc, from classify.train) and the hand-labelled base samples (handcheck.py): both halves must pass."""
    from . import handcheck

    renders_ok = acc.get("content_read", 0) >= GATE_CLASSIFIER and acc.get("style_read", 0) >= GATE_CLASSIFIER
    hand = handcheck.gate(models)
    return {"pass": renders_ok and hand["pass"], "renders_pass": renders_ok, "hand": hand,
            **{k: acc[k] for k in acc if k != "seconds"}}


def composition_gate(study, images: int) -> dict:
    """Both factors right on the held-out named diagonal, next to named pairs the base was trained on."""
    out = {}
    trained = [(s, y) for s in W.NAMED_SHAPES for y in W.NAMED_STYLES if (s, y) not in W.HELD_OUT][::3][:4]
    for name, pairs, seed in (("held-out named", W.HELD_OUT, 7), ("trained named", trained, 8)):
        texts = [W.caption(s, y) for s, y in pairs for _ in range(images)]
        imgs = sample_texts(study.base, study.clip, texts, study.scfg, study.size, seed)
        (ps, cs), (py, cy) = read(study.models, imgs)
        want_s = torch.tensor([W.SHAPES.index(s) for s, _ in pairs for _ in range(images)])
        want_y = torch.tensor([W.STYLES.index(y) for _, y in pairs for _ in range(images)])
        ok_s, ok_y = (ps == want_s) & (cs >= REJECT_BELOW), (py == want_y) & (cy >= REJECT_BELOW)
        out[name] = {"both": float((ok_s & ok_y).float().mean()), "shape": float(ok_s.float().mean()),
                     "style": float(ok_y.float().mean()), "images": len(texts),
                     "unreadable": float(((cs < REJECT_BELOW) | (cy < REJECT_BELOW)).float().mean())}
    out["pass"] = out["held-out named"]["both"] >= GATE_COMPOSITION
    return out


def prior_gate(study, images: int) -> dict:
    """Distribution of the base's reading of the subjects' prompts, with and without the trigger."""
    out = {}
    for name, text, seed in (("a shape in pattern style", W.caption(W.UNNAMED_SHAPES[0], W.UNNAMED_STYLES[0]), 9),
                             ("a sks shape in pattern style", W.caption(W.UNNAMED_SHAPES[0], W.UNNAMED_STYLES[0], True), 10)):
        imgs = sample_texts(study.base, study.clip, [text] * images, study.scfg, study.size, seed)
        (ps, cs), (py, cy) = read(study.models, imgs)
        readable = (cs >= REJECT_BELOW) & (cy >= REJECT_BELOW)
        shapes = {W.SHAPES[k]: float(((ps == k) & readable).float().mean()) for k in range(len(W.SHAPES))}
        styles = {W.STYLES[k]: float(((py == k) & readable).float().mean()) for k in range(len(W.STYLES))}
        unnamed = float(sum(((ps == W.SHAPES.index(s)) & (py == W.STYLES.index(y)) & readable).sum()
                            for s, y in W.SUBJECTS)) / images
        cells = {f"{s}/{y}": float(((ps == W.SHAPES.index(s)) & (py == W.STYLES.index(y)) & readable).float().mean())
                 for s, y in W.SUBJECTS}
        out[name] = {"images": images, "unreadable": float((~readable).float().mean()), "unnamed_both": unnamed,
                     "shapes": shapes, "styles": styles, "max_subject": max(cells.values()),
                     "max_shape": max(shapes[s] for s in W.UNNAMED_SHAPES),
                     "max_style": max(styles[y] for y in W.UNNAMED_STYLES)}
    plain = out["a shape in pattern style"]
    out["pass"] = (plain["unnamed_both"] >= GATE_PRIOR_OBEYS and plain["max_shape"] <= GATE_PRIOR_MAX
                   and plain["max_style"] <= GATE_PRIOR_MAX)
    return out


# ---------------------------------------------------------------------------------------------- blocks


def block_key(block: str) -> tuple:
    """LDM block path -> ComfyUI's transformer_options["block"]."""
    if block.startswith("middle_block"):
        return ("middle", 0)
    kind, number = block.split(".")[:2]
    return ({"input_blocks": "input", "output_blocks": "output"}[kind], int(number))


def swap_patch(block: tuple, swapped: torch.Tensor):
    """attn2 patch: this block's cross-attention reads `swapped` (one context per image) in the conditional rows."""

    def patch(n, context, value, extra):
        if extra.get("block") != block:
            return n, context, value
        rows = swapped.shape[0]
        c_or_u = extra.get("cond_or_uncond", [0])
        if context.shape[0] != rows * len(c_or_u):  # the sampler split the batch: the swap would silently miss rows
            raise RuntimeError(f"block swap: context batch {context.shape[0]} is not {len(c_or_u)} x {rows} images")
        chunks = list(context.split(rows))
        for i, which in enumerate(c_or_u):
            if which == 0:  # 0 = the conditional half (ComfyUI's COND), 1 = the unconditional
                chunks[i] = swapped.to(context)
        new = torch.cat(chunks)
        return n, new, new

    return patch


def block_diagnostic(study, images: int) -> dict:
    """For every block with cross-attention: sample 'a X in Y style' (named) with that block alone reading
    'a X' in Y' style' (the next named shape and style). Rates of X' (shape follows) and Y' (texture follows),
    the paired difference per named pair with a bootstrap CI over pairs, and the block's reading."""
    from unziplora_pack.unziplora.targets import find_targets

    blocks = list(dict.fromkeys(t.block for t in find_targets(study.base) if t.attention == "attn2"))
    pairs = [(s, y) for s in W.NAMED_SHAPES for y in W.NAMED_STYLES]
    swap_to = {(s, y): (W.NAMED_SHAPES[(W.NAMED_SHAPES.index(s) + 1) % 4],
                        W.NAMED_STYLES[(W.NAMED_STYLES.index(y) + 1) % 4]) for s, y in pairs}
    texts = [W.caption(s, y) for s, y in pairs for _ in range(images)]
    swapped_texts = [W.caption(*swap_to[(s, y)]) for s, y in pairs for _ in range(images)]
    swapped = torch.cat([study.encoder.encode(t)[0] for t in swapped_texts])
    want_s = torch.tensor([W.SHAPES.index(swap_to[p][0]) for p in pairs for _ in range(images)])
    want_y = torch.tensor([W.STYLES.index(swap_to[p][1]) for p in pairs for _ in range(images)])
    pair_of = np.repeat(np.arange(len(pairs)), images)
    out = {"images_per_block": len(texts), "blocks": {}}
    for block in [None, *blocks]:
        model = study.base
        if block is not None:
            model = study.base.clone()
            model.set_model_attn2_patch(swap_patch(block_key(block), swapped))
        imgs = sample_texts(model, study.clip, texts, study.scfg, study.size, 11)
        (ps, cs), (py, cy) = read(study.models, imgs)
        fs = ((ps == want_s) & (cs >= REJECT_BELOW)).float().numpy()
        fy = ((py == want_y) & (cy >= REJECT_BELOW)).float().numpy()
        per_pair = [float(fs[pair_of == k].mean() - fy[pair_of == k].mean()) for k in range(len(pairs))]
        d, lo, hi = stats.bootstrap_ci(per_pair)
        carries = "content" if (lo > 0 and d >= SPECIALISED) else "style" if (hi < 0 and -d >= SPECIALISED) else "-"
        out["blocks"][block or "(none swapped)"] = {"shape_follows": float(fs.mean()), "style_follows": float(fy.mean()),
                                                    "delta": d, "low": lo, "high": hi, "carries": carries}
        study.log(f"[blocks] {block or '(none swapped)'}: shape follows {fs.mean():.2f}, texture follows "
                  f"{fy.mean():.2f}, Δ {d:+.2f} [{lo:+.2f}, {hi:+.2f}] -> {carries}")
    roles = {b: r["carries"] for b, r in out["blocks"].items() if r["carries"] != "-" and b in blocks}
    out["roles"] = roles
    out["pass"] = "content" in roles.values() and "style" in roles.values()
    return out


def cached(study, name: str, fn, *args) -> dict:
    path = study.dir / "gates" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    from .study import locked, write_json

    with locked(study.dir / "gates" / f"{name}.lock"):
        if path.exists():
            return json.loads(path.read_text())
        out = fn(study, *args)
        write_json(path, out)
        return out


def all_gates(study, blocks: bool = True) -> dict:
    """Every gate (blocks=False: all but the block diagnostic, the one that takes minutes)."""
    p = study.p
    out = {"classifiers": classifier_gate(study.acc, study.models),
           "composition": cached(study, "composition", composition_gate, p["gate_images"]),
           "prior": cached(study, "prior", prior_gate, p["gate_images"] * 4)}
    if blocks:
        out["blocks"] = cached(study, "blocks", block_diagnostic, p["diag_images"])
    return out
