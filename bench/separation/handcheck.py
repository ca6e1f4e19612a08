"""The classifier gate's second half: the base model's own samples, labelled by a person, read by the classifiers.

    .venv/bin/python -m bench.separation.handcheck make --set gate   # sample a set: its .npz and a grid to label
    .venv/bin/python -m bench.separation.handcheck score              # the classifiers against the labels

Renders alone do not show that the classifiers read what the base draws: in session 7 a shape head that was
perfect on renders read clear crosses and triangles in the base's samples as circles. So a fixed set of base
samples is kept in the repository (bench/separation/handcheck/, uint8, a few tens of KB) with one label per image
and factor, written by looking at the grid. A label is a class name, or "?" where the person could not tell (an
image drowned in speckle, a circle that might be a rounded square). The gate reads only labelled factors, counts
the classifiers' "unreadable" as wrong, and reports how many images were labelled "?".

Two sets, labelled the same way. "dev" (seed 500) was labelled first and then used to choose the classifiers'
augmentation, so it no longer tests them; "gate" (seed 600) was sampled and labelled after that choice and is the
one the gate reads. The samples come from one base (its world version is in the file name); a new world version
needs new sets and new labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from . import unnamed as W

FOLDER = Path(__file__).resolve().parent / "handcheck"
GATE_HAND = 0.95  # read right (unreadable = wrong) on the labelled factors of the base's samples, each head
PER_ROW = 12
SETS = {"dev": 500, "gate": 600}  # seeds no look grid or gate uses


def texts() -> list[str]:
    """Eight rows of twelve: what a unit's probes ask the base for, the prior's prompt most of all."""
    rows = [W.caption(W.UNNAMED_SHAPES[0], W.UNNAMED_STYLES[0])] * 3  # "a shape in pattern style"
    rows += [W.caption(W.UNNAMED_SHAPES[0], W.UNNAMED_STYLES[0], trigger=True)]  # "a sks shape in pattern style"
    rows += [W.caption(s, y) for s, y in W.HELD_OUT]  # named pairs never captioned together
    return [t for t in rows for _ in range(PER_ROW)]


def paths(version: int = W.VERSION, which: str = "gate") -> tuple[Path, Path, Path]:
    stem = FOLDER / f"unnamed_v{version}_{which}"
    return stem.with_suffix(".npz"), Path(f"{stem}_labels.json"), Path(f"{stem}_grid.png")


def make(which: str = "gate") -> None:
    from . import base, gates
    from .env import cache_dir, setup
    from .experiment import SampleConfig, WorldClip
    from .look import grid, to_uint8
    from .presets_unnamed import PRESETS

    setup()
    cfg = PRESETS["full"]["base"]
    patcher = base.load_cached(cfg, cache_dir())
    clip = WorldClip(W.encoder(cfg.tokens), cfg.size)
    all_texts = texts()
    imgs = torch.cat([gates.sample_texts(patcher, clip, all_texts[i:i + PER_ROW], SampleConfig(), cfg.size, SETS[which] + i)
                      for i in range(0, len(all_texts), PER_ROW)])
    npz, _, png = paths(which=which)
    FOLDER.mkdir(exist_ok=True)
    pixels = to_uint8(imgs)
    np.savez_compressed(npz, images=pixels, texts=np.array(all_texts))
    grid(pixels, png, per_row=PER_ROW)
    print(f"wrote {npz} ({len(pixels)} images) and {png}")


def load(version: int = W.VERSION, which: str = "gate"):
    """(images [N, H, W, 3] float 0..1, labels: list of (shape or "?", texture or "?")) or None when not labelled."""
    npz, labels_path, _ = paths(version, which)
    if not npz.exists() or not labels_path.exists():
        return None
    data = np.load(npz)
    labels = json.loads(labels_path.read_text())["labels"]
    if len(labels) != len(data["images"]):
        raise ValueError(f"{labels_path.name}: {len(labels)} labels for {len(data['images'])} images")
    styles = (*W.NAMED_STYLES, *W.VERSIONS[version])  # the classes of the version that drew the set
    for shape, style in labels:
        if shape not in (*W.SHAPES, "?") or style not in (*styles, "?"):
            raise ValueError(f"{labels_path.name}: label {shape}/{style} is not a class of the world (or '?')")
    return torch.from_numpy(data["images"]).float() / 255, labels


def agreement(models: dict, images: torch.Tensor, labels) -> dict:
    """Per head: the share of labelled images read as labelled (unreadable = wrong), and the counts."""
    from .classify import REJECT_BELOW, read

    (ps, cs), (py, cy) = read(models, images)
    out = {}
    for head, ids, conf, names, k in (("content", ps, cs, W.SHAPES, 0), ("style", py, cy, W.STYLES, 1)):
        labelled = [i for i, lab in enumerate(labels) if lab[k] != "?"]
        right = [i for i in labelled if names[int(ids[i])] == labels[i][k] and float(conf[i]) >= REJECT_BELOW]
        wrong = {}
        for i in labelled:
            if i not in right:
                got = names[int(ids[i])] if float(conf[i]) >= REJECT_BELOW else "unreadable"
                key = f"{labels[i][k]} read as {got}"
                wrong[key] = wrong.get(key, 0) + 1
        out[head] = {"right": len(right), "labelled": len(labelled), "rate": len(right) / max(len(labelled), 1),
                     "hand_unsure": len(labels) - len(labelled), "errors": dict(sorted(wrong.items(), key=lambda kv: -kv[1]))}
    return out


def gate(models: dict, version: int = W.VERSION) -> dict:
    """The gate set decides; the dev set's agreement is reported beside it."""
    loaded = load(version, "gate")
    if loaded is None:
        return {"pass": False, "missing": f"no labelled gate set for world version {version} in {FOLDER}"}
    out = agreement(models, *loaded)
    out["images"] = len(loaded[1])
    out["pass"] = all(out[h]["rate"] >= GATE_HAND and out[h]["labelled"] > 0 for h in ("content", "style"))
    dev = load(version, "dev")
    if dev is not None:
        out["dev"] = agreement(models, *dev)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("make", "score"))
    ap.add_argument("--set", choices=sorted(SETS), default="gate")
    args = ap.parse_args(argv)
    if args.what == "make":
        make(args.set)
        return 0
    from . import classify
    from .env import cache_dir, setup
    from .presets_unnamed import PRESETS

    setup()
    p = PRESETS["full"]
    models, _ = classify.load_or_train(p["base"].size, p["classifier_steps"], cache_dir(), w=W)
    print(json.dumps(gate(models), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
