"""Synthetic content x style separation benchmark, end to end (a benchmark, never part of the test suite).

Two worlds. `--world unnamed` (the default; bench/separation/cli_unnamed.py, issue 18): subjects made of shapes and
textures the captions never name, gates, controls and paired statistics. `--world named` (this file, kept for
comparison with sessions 3-4): named shapes and styles; its table cannot separate the modes (see bench/RESULTS.md).

    .venv/bin/python -m bench.separation --world named        # full size; cached stages are reused
    .venv/bin/python -m bench.separation --world named --preset quick       # one pair, one seed (minutes, once the base exists)
    .venv/bin/python -m bench.separation --world named --preset toy         # seconds: the smoke test's size
    .venv/bin/python -m bench.separation --world named --write-results      # also replace our section of bench/RESULTS.md
    .venv/bin/python -m bench.separation.look OUT.png         # a grid of the base's samples, to look at

Stages (each cached under ~/.cache/unziplora-dev/separation/, keyed by its settings, fixed seeds):
the base model of the world (bench/separation/base.py), the classifiers (classify.py), then per held-out pair,
mode and seed one LoRA pair trained and used through the pack's own code (experiment.py), the table (report.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import world
from .base import BaseConfig
from .experiment import MODES, LoraConfig, SampleConfig
from .env import REPO, cache_dir, setup

SECTION = "## Separation benchmark (synthetic content × style)"

PRESETS = {
    "toy": dict(base=BaseConfig(steps=2, batch=2), classifier_steps=2, pairs=2, seeds=(0,), composition=2,
                lora=LoraConfig(steps=2, rank=4), sample=SampleConfig(steps=1, per_prompt=1, others=1)),
    # the benchmark: a base that composes (4000 steps, ~45 min on 2 CPU cores; cached), every held-out pair, two
    # seeds; LoRAs trained until they overfit their one image (300 steps, ~50 s each): ~70 min, ~35 per seed
    "full": dict(base=BaseConfig(steps=4000), classifier_steps=400, pairs=6, seeds=(0, 1), composition=6,
                 lora=LoraConfig(steps=300, rank=32, lr=2e-3), sample=SampleConfig(steps=16, per_prompt=4, others=2)),
    # the same base, one pair and one seed per mode: a few minutes once the base is cached
    "quick": dict(base=BaseConfig(steps=4000), classifier_steps=400, pairs=1, seeds=(0,), composition=6,
                  lora=LoraConfig(steps=300, rank=32, lr=2e-3), sample=SampleConfig(steps=16, per_prompt=4, others=2)),
}


def run(preset: str = "full", cache: Path | None = None, pairs: int | None = None, seeds=None, modes=MODES,
        lora: LoraConfig | None = None, log=print, command: str = "") -> dict:
    setup()
    from . import base as base_mod
    from . import classify, experiment, report

    p = PRESETS[preset]
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    lcfg = lora or p["lora"]
    scfg = p["sample"]
    seeds = tuple(seeds) if seeds else p["seeds"]
    used = world.HELD_OUT[: pairs or p["pairs"]]
    t0 = time.time()
    encoder = world.WordEncoder(tokens=p["base"].tokens)
    base_patcher, base_info = base_mod.load_or_train(p["base"], encoder, cache, log)
    models, acc = classify.load_or_train(p["base"].size, p["classifier_steps"], cache, log)
    clip = experiment.WorldClip(encoder, p["base"].size)
    k = p["composition"]
    comp = {"train pairs": experiment.composition(base_patcher, clip, models, p["base"].size, scfg, 7,
                                                  world.TRAIN_PAIRS[:: len(world.TRAIN_PAIRS) // k][:k]),
            "held-out pairs": experiment.composition(base_patcher, clip, models, p["base"].size, scfg, 8,
                                                     world.HELD_OUT[:k])}
    log(f"[base] composition: {json.dumps(comp)}")
    def assemble(out):
        records = {m: out["records"][m] for m in ("base", *MODES) if out["records"].get(m)}
        return {"preset": preset, "base": base_info, "base_config": asdict(p["base"]), "classifiers": acc,
                "composition": comp, "lora": asdict(lcfg), "sample": asdict(scfg), "pairs": used, "seeds": seeds,
                "timing_s": {m: round(report.mean(v), 1) for m, v in out["timing"].items() if v},
                "records": records, "table": report.markdown_table(records), "seconds": round(time.time() - t0, 1),
                "command": command, "modes_done": [m for m in records if m != "base"]}

    def partial(out):  # a long run leaves its table so far, mode by mode
        res = assemble(out)
        (cache / f"results_{preset}.partial.json").write_text(json.dumps(res))
        log(res["table"])

    out = experiment.run_all(base_patcher, encoder, models, used, modes, lcfg, scfg, p["base"].size, seeds, log,
                             on_mode_done=partial)
    result = assemble(out)
    (cache / f"results_{preset}.json").write_text(json.dumps(result))
    return result


def section_text(result: dict, command: str) -> str:
    from . import report

    acc, comp = result["classifiers"], result["composition"]
    b = result["base_config"]
    lines = [
        SECTION, "",
        f"Command: `{command}` (total {result['seconds']:.0f} s on this machine, cached stages reused).", "",
        f"- World: {len(world.SHAPES)} shapes × {len(world.STYLES)} styles at {b['size']}×{b['size']} px, latent = "
        "the image (R, G, B, luma in -1..1; no autoencoder). Held-out pairs (never captioned together in base "
        f"training): {', '.join(f'{s}/{y}' for s, y in world.HELD_OUT)}.",
        f"- Base model: ComfyUI SDXL UNet (same block names and attention layout), model_channels "
        f"{b['model_channels']}, {result['base']['params_M']} M parameters, {result['base']['steps']} steps (of a "
        f"{b['steps']}-step cosine schedule) × batch {b['batch']}, lr {b['lr']}, from scratch in {result['base']['seconds']:.0f} s, final loss {result['base']['final_loss']}.",
        f"- Composition of the base model (per-word frozen embeddings), both factors right: train pairs "
        f"{comp['train pairs']['both']:.2f} (shape {comp['train pairs']['shape']:.2f}, style "
        f"{comp['train pairs']['style']:.2f}), held-out pairs {comp['held-out pairs']['both']:.2f} (shape "
        f"{comp['held-out pairs']['shape']:.2f}, style {comp['held-out pairs']['style']:.2f}).",
        f"- Classifiers, held-out renders: content {acc['content']:.3f}, style {acc['style']:.3f} "
        f"({acc['test_images']} images)"
        + (f"; the same renders colour-cast and noised: {acc['content_cast']:.3f}, {acc['style_cast']:.3f}. They are "
           "trained with a global colour cast so that they read shape and texture, not exact colours (the "
           "base's samples drift in colour at this size)." if "content_cast" in acc else "."),
        "- Sampling starts from zero-mean noise (per image and channel): on a 16×16 latent the mean of plain "
        "noise is as large as the image's own and the base paints random flat colours behind the right shapes. "
        "Training (base and LoRAs) uses plain noise.",
        f"- LoRA runs: {result['lora']['steps']} steps, rank {result['lora']['rank']}, lr {result['lora']['lr']}, "
        f"pairs {len(result['pairs'])}, seeds {list(result['seeds'])}; sampling {result['sample']['steps']} steps "
        f"{result['sample']['sampler']}/{result['sample']['scheduler']} cfg {result['sample']['cfg']}, "
        f"{result['sample']['per_prompt']} images per prompt. Seconds per run: "
        + ", ".join(f"{m} {s}" for m, s in result["timing_s"].items()) + ".",
        "",
        *_caveat(comp),
        result["table"], "",
        *([f"Modes not run in the time available: {', '.join(m for m in MODES if m not in result['modes_done'])}.",
           ""] if set(result.get("modes_done", MODES)) != set(MODES) else []),
        "Rates are fractions of sampled images the classifiers read as asked; ± is the standard deviation over "
        "(image, seed) units. 'leak' = the training image's own style (content probe) or shape (style probe) "
        "showing up where the prompt asked for another; chance is 1/6.", "",
        report.claims_table(result["records"], testable=not _caveat(comp)), "",
    ]
    return "\n".join(lines)


def _caveat(comp: dict) -> list[str]:
    """The table only tests separation when the base model follows its prompts: say so when it does not."""
    train = comp["train pairs"]["both"]
    if train >= 0.5:
        return []
    return [f"**Read this first:** the base model follows its own captions on only {train:.0%} of training pairs "
            f"(shape {comp['train pairs']['shape']:.0%}, style {comp['train pairs']['style']:.0%}; chance 1/6 "
            "each). A 'new style' or 'new shape' asked by the prompt cannot come out of a base that ignores the "
            "prompt, so the rows below measure what each LoRA memorised of its image, not how well the modes "
            "separate content from style. This run neither confirms nor refutes the paper's claims; it needs a "
            "base trained until it composes (the same command with a longer base schedule).", ""]


def merge_results(results: list[dict]) -> dict:
    """One result from runs of the same preset with other seeds: records joined, the table made again."""
    from . import report

    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    merged["records"] = {m: [r for res in results for r in res["records"].get(m, [])] for m in results[0]["records"]}
    merged["seeds"] = [s for res in results for s in res["seeds"]]
    merged["timing_s"] = {m: round(sum(res["timing_s"].get(m, 0) for res in results) / len(results), 1)
                          for m in results[0]["timing_s"]}
    merged["seconds"] = max(res["seconds"] for res in results)
    merged["table"] = report.markdown_table(merged["records"])
    return merged


def write_section(text: str, path: Path = REPO / "bench" / "RESULTS.md", section: str = SECTION) -> None:
    """Replace our section (from its heading to the next '## ' heading) or append it."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(section))
        new = old[:start] + text.rstrip("\n") + "\n" + ("" if nxt < 0 else "\n" + old[nxt + 1:])
    path.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    world = argparse.ArgumentParser(add_help=False)
    world.add_argument("--world", choices=("unnamed", "named"), default="unnamed")
    if world.parse_known_args(argv)[0].world == "unnamed":
        from . import cli_unnamed

        cli_unnamed.main(argv)
        return 0
    argv = [a for a in argv if a not in ("--world", "named", "--world=named")]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {cache_dir()})")
    ap.add_argument("--pairs", type=int, default=None, help=f"held-out pairs to decompose (1-{len(world.HELD_OUT)})")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="training seeds")
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--lora-steps", type=int, default=None)
    ap.add_argument("--lora-lr", type=float, default=None)
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    ap.add_argument("--write-results", action="store_true", help="replace our section of bench/RESULTS.md")
    ap.add_argument("--report-only", type=Path, nargs="+", default=None, metavar="JSON",
                    help="write the section from saved results files and exit (several: runs of other seeds, e.g. "
                         "one process per seed, merged)")
    args = ap.parse_args(argv)
    if args.report_only:
        result = merge_results([json.loads(p.read_text()) for p in args.report_only])
        write_section(section_text(result, result.get("command", "")))
        print(result["table"])
        return 0
    torch.set_num_threads(args.threads)
    lora = PRESETS[args.preset]["lora"]
    for name, value in (("steps", args.lora_steps), ("lr", args.lora_lr), ("rank", args.lora_rank)):
        if value is not None:
            lora = replace(lora, **{name: value})
    command = ".venv/bin/python -m bench.separation --world named " + " ".join(argv)
    result = run(args.preset, args.cache, args.pairs, args.seeds, tuple(args.modes), lora, command=command.strip())
    print(result["table"])
    if args.write_results:
        write_section(section_text(result, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
