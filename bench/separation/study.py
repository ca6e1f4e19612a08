"""The unnamed-world study (issue 18): per (subject, arm, seed) units, cached and resumable.

Arms: the base with no LoRA; the pack's five modes, each trained by the pack's Trainer, exported, read back from
its files, put on the base by the Apply node's function and prompted by the Prompts node's code; and three
training-free strength controls built from the naive run of the same subject and seed:

    naive_strength  naive's sides at M3's overall kept fraction of that side as LoRA strength
    naive_randmask  naive's sides with random rows of `up` kept, per layer at M3's kept fraction of that layer
    naive_average   each of naive's sides replaced by the average of the two ((c + s) / 2 on every layer)

Probes of one unit (subject = unnamed shape S in unnamed texture T; X' / Y' named shapes / styles; P = partner):
    content alone  "a sks shape in Y' style"        recontext = S and Y'; leak = T
    style alone    "a X' in pattern style"           restyle = T and X'; leak = S
    both           combined / content / style prompts (Prompts node)     recreate = S and T
    crossed        content of the subject + style of P, same prompts     crossed = S and T_P
Sampling seeds depend on (subject, seed, probe) only, so every arm of a unit sees the same noise.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import unnamed as W
from .experiment import WorldClip, _prompts_node, plain_conditioning, sample

MODES = ("naive", "prompt", "column", "unziplora", "blora")
CONTROLS = ("naive_strength", "naive_randmask", "naive_average")
DIAG = "unziplora_diag"  # M3 with block roles read off the block diagnostic (only when blocks specialise)
ARMS = ("base", *MODES, *CONTROLS)


def register_diag_mode(roles: dict) -> None:
    """The pack's M3 with other block roles: a ModePreset in the pack's mode table for this process (the Trainer,
    export and loaders then treat it as any mode). Blocks the diagnostic did not read stay shared."""
    from unziplora_pack.unziplora.roles import MODES as PACK_MODES
    from unziplora_pack.unziplora.roles import ModePreset

    PACK_MODES[DIAG] = ModePreset(DIAG, True, True, dict(roles))


def subject_name(subject) -> str:
    return f"{subject[0]}-{subject[1]}"


@contextmanager
def locked(path: Path):
    """One process at a time through a shared stage (two seed processes start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


class Study:
    def __init__(self, preset: dict, cache: Path, log=print, base_file: Path | None = None):
        """base_file: use these base weights (e.g. a partial checkpoint, for a pilot) instead of the cached base;
        its units go to a folder of their own."""
        from . import base as base_mod
        from . import classify
        from .env import setup

        setup()
        self.p, self.log = preset, log
        self.size = preset["base"].size
        self.lcfg, self.scfg = preset["lora"], preset["sample"]
        self.encoder = W.encoder(preset["base"].tokens)
        with locked(cache / "stage.lock"):
            if base_file is None:
                self.base, self.base_info = base_mod.load_or_train(preset["base"], self.encoder, cache, log)
                base_tag = preset["base"].key()
            else:
                from safetensors import safe_open
                from safetensors.torch import load_file

                with safe_open(str(base_file), framework="pt") as f:
                    step = (f.metadata() or {}).get("step", "?")
                self.base = base_mod.build_model(preset["base"], load_file(str(base_file)))
                self.base_info = {"file": Path(base_file).name, "steps": step}
                base_tag = f"{Path(base_file).name}@{step}"
            self.models, self.acc = classify.load_or_train(self.size, preset["classifier_steps"], cache, log, w=W)
        self.clip = WorldClip(self.encoder, self.size)
        key = json.dumps([base_tag, preset["classifier_steps"], classify.AUGMENT,
                          classify.REJECT_BELOW, asdict(self.lcfg), asdict(self.scfg)], sort_keys=True)
        self.dir = cache / "unnamed" / hashlib.sha1(key.encode()).hexdigest()[:12]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "config.json").exists():
            (self.dir / "config.json").write_text(key)
        self._handles: dict = {}

    # ------------------------------------------------------------------------------------------ LoRA runs

    def run_dir(self, mode, subject, seed) -> Path:
        return self.dir / "runs" / f"{mode}__{subject_name(subject)}__s{seed}"

    def train(self, mode, subject, seed) -> dict:
        """Train (or find) one run; {bundle, final_loss, first_loss, seconds, kept}."""
        out = self.run_dir(mode, subject, seed)
        info_file = out / "run.json"
        if info_file.exists():
            return json.loads(info_file.read_text())
        from unziplora_pack.training.config import TrainConfig
        from unziplora_pack.training.data import LatentPosteriors, PromptStreams
        from unziplora_pack.training.export import export_run
        from unziplora_pack.training.loop import Trainer, TrainInputs
        from unziplora_pack.training.model_copy import private_unet_copy
        from unziplora_pack.training.service import OutputDirs

        from .base import adm

        shape, style = subject
        texts = {"prompt": W.caption(shape, style, trigger=True), "content_prompt": W.caption(shape, None, True),
                 "style_prompt": W.caption(shape, style)}
        (x, pooled), (x_c, _), (x_s, _) = (self.encoder.encode(texts[k]) for k in
                                           ("prompt", "content_prompt", "style_prompt"))
        rgb, _, _ = W.batch([subject], self.size, seed=10_000 + 97 * W.SUBJECTS.index(tuple(subject)) + seed)
        latent = W.to_latent(rgb)
        unet, fp = private_unet_copy(self.base)
        inputs = TrainInputs(unet=unet, streams=PromptStreams(x, x_c, x_s, pooled),
                             posteriors=LatentPosteriors(latent, torch.zeros_like(latent)),
                             adm=adm(self.base, pooled, self.size).detach(), base_fingerprint=fp, info=dict(texts))
        lc = self.lcfg
        cfg = TrainConfig(mode=mode, steps=lc.steps, rank=lc.rank, lr_content=lc.lr, lr_style=lc.lr,
                          resolution=self.size * 8, sample_times=min(lc.sample_times, lc.steps - 1),
                          checkpoint_every=0, seed=seed, precision="fp32", optimizer="adamw")
        t0 = time.time()
        result = Trainer(inputs, cfg).run()
        seconds = time.time() - t0
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        dirs = OutputDirs(loras=str(tmp), bundles=str(tmp), checkpoints=str(tmp))
        saved = export_run(result, cfg, dirs, out.name, inputs, base_name="separation-unnamed-base")
        losses = result.losses
        info = {"mode": mode, "subject": list(subject), "seed": seed, "bundle": Path(saved["bundle"]).name,
                "final_loss": sum(losses[-20:]) / len(losses[-20:]), "first_loss": sum(losses[:20]) / len(losses[:20]),
                # the curve in 10 windows: a single image's loss is noisy step to step, and a mode whose LoRAs
                # diverge (final above first) must be told from one that is flat
                "loss_curve": [round(float(c.mean()), 5) for c in np.array_split(np.array(losses), min(10, len(losses)))],
                "steps": len(losses), "seconds": round(seconds, 1)}
        if out.exists():  # a run cut off between rename and run.json: its files are redone
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        info["kept"] = kept_fractions(self._read(out / info["bundle"]))
        write_json(info_file, info)
        self.log(f"[{mode}] {subject_name(subject)} seed {seed}: {info['steps']} steps in {seconds:.0f} s, final loss "
                 f"{info['final_loss']:.4f}, kept content {info['kept']['content']['all']:.2f} style "
                 f"{info['kept']['style']['all']:.2f}")
        return info

    @staticmethod
    def _read(bundle: Path):
        from unziplora_pack.unziplora import pair as pairs

        return pairs.from_bundle(str(bundle))

    def handle(self, mode, subject, seed):
        """The run's LoRA pair as the loader nodes read it from its files."""
        k = (mode, tuple(subject), seed)
        if k not in self._handles:
            out = self.run_dir(mode, subject, seed)
            self._handles[k] = self._read(out / json.loads((out / "run.json").read_text())["bundle"])
        return self._handles[k]

    # ------------------------------------------------------------------------------------------ arms

    def arm_models(self, arm, subject, seed) -> dict:
        """{probe kind: (model, content handle or None, style handle or None)} for one arm."""
        from unziplora_pack.unziplora.apply import apply_pair

        partner = W.partner(subject)
        if arm == "base":
            return dict.fromkeys(("content", "style", "both", "crossed"), (self.base, None, None))
        if arm in MODES or arm == DIAG:
            for s in (subject, partner):
                self.train(arm, s, seed)
            h, hp = self.handle(arm, subject, seed), self.handle(arm, partner, seed)
            cs = ss = 1.0
        else:
            for s in (subject, partner):
                self.train("naive", s, seed)
                self.train("unziplora", s, seed)
            h, hp, cs, ss = self.control(arm, subject, seed), self.control(arm, partner, seed), 1.0, 1.0
            if arm == "naive_strength":
                k, kp = (json.loads((self.run_dir("unziplora", s, seed) / "run.json").read_text())["kept"]
                         for s in (subject, partner))
                return {"content": (apply_pair(self.base, h, None, "content", content_strength=k["content"]["all"]), None, None),
                        "style": (apply_pair(self.base, h, None, "style", style_strength=k["style"]["all"]), None, None),
                        "both": (apply_pair(self.base, h, None, "both", k["content"]["all"], k["style"]["all"]), h, None),
                        "crossed": (apply_pair(self.base, h, hp, "both", k["content"]["all"], kp["style"]["all"]), h, hp)}
        return {"content": (apply_pair(self.base, h, None, "content", content_strength=cs), None, None),
                "style": (apply_pair(self.base, h, None, "style", style_strength=ss), None, None),
                "both": (apply_pair(self.base, h, None, "both"), h, None),
                "crossed": (apply_pair(self.base, h, hp, "both"), h, hp)}

    def control(self, arm, subject, seed):
        """A training-free control handle from the naive run (and M3's masks) of this subject and seed."""
        naive = self.handle("naive", subject, seed)
        if arm == "naive_strength":
            return naive
        if arm == "naive_randmask":
            m3 = self.handle("unziplora", subject, seed)
            rng = np.random.default_rng(1_000 + 31 * W.SUBJECTS.index(tuple(subject)) + seed)
            return derive(naive, {role: random_rows(naive.side(role), m3.side(role), rng) for role in ("content", "style")})
        if arm == "naive_average":
            avg = average_sides(naive.side("content"), naive.side("style"))
            return derive(naive, {"content": avg, "style": avg})
        raise ValueError(arm)

    # ------------------------------------------------------------------------------------------ probes

    def probe_images(self, models: dict, subject, seed):
        """(kind, what the probe asked, images) for every probe of one unit, in the unit's order and with its seeds;
        models: arm_models' result for the unit's arm."""
        i = W.SUBJECTS.index(tuple(subject))
        base_seed = seed * 100_000 + i * 1_000
        negative = plain_conditioning(self.clip, "")
        model = models["content"][0]
        for k in range(self.scfg.others):
            y2 = W.NAMED_STYLES[(i + k) % len(W.NAMED_STYLES)]
            text = W.prompt(W.SHAPE_WORD, y2, trigger=True)
            yield "content alone", {"new_style": y2}, sample(model, plain_conditioning(self.clip, text), negative,
                                                             self.size, self.scfg, base_seed + k)
        model = models["style"][0]
        for k in range(self.scfg.others):
            x2 = W.NAMED_SHAPES[(i + k) % len(W.NAMED_SHAPES)]
            text = W.prompt(x2, W.STYLE_WORD)
            yield "style alone", {"new_shape": x2}, sample(model, plain_conditioning(self.clip, text), negative,
                                                           self.size, self.scfg, base_seed + 100 + k)
        texts = (W.caption(*subject, trigger=True), W.caption(subject[0], None, True), W.caption(*subject))
        for kind, off in (("both", 200), ("crossed", 300)):
            model, hc, hs = models[kind]
            if hc is None:
                pos, neg = plain_conditioning(self.clip, texts[0]), negative
            else:
                pos, neg = _prompts_node(self.clip, *texts, hc, hs)
            yield kind, {}, sample(model, pos, neg, self.size, self.scfg, base_seed + off)

    def unit(self, arm, subject, seed) -> dict:
        """The cached records of one (arm, subject, seed): every sampled image as (shape, conf, style, conf)."""
        path = self.dir / "units" / f"{arm}__{subject_name(subject)}__s{seed}.json"
        if path.exists():
            return json.loads(path.read_text())
        from .classify import read

        models = self.arm_models(arm, subject, seed)  # trains what is missing (timed in run.json)
        t0 = time.time()
        probes = []
        for kind, want, imgs in self.probe_images(models, subject, seed):
            (ps, cs), (py, cy) = read(self.models, imgs)
            probes.append({"kind": kind, **want, "shape": ps.tolist(), "shape_conf": [round(c, 3) for c in cs.tolist()],
                           "style": py.tolist(), "style_conf": [round(c, 3) for c in cy.tolist()]})
        rec = {"arm": arm, "subject": list(subject), "partner": list(W.partner(subject)), "seed": seed,
               "probes": probes, "seconds": round(time.time() - t0, 1)}
        write_json(path, rec)
        return rec

    def run(self, subjects, seeds, arms=ARMS, deadline: float | None = None) -> int:
        """Every unit, subject by subject (so a cut-off run leaves whole subjects, paired across arms)."""
        done = 0
        for seed in seeds:
            for subject in subjects:
                for arm in arms:
                    if deadline is not None and time.time() > deadline:
                        self.log("[study] deadline reached; rerun the same command to continue")
                        return done
                    self.unit(arm, subject, seed)
                    done += 1
        return done


# ---------------------------------------------------------------------------------------------- side surgery


def _state_like(side, source_tag: str):
    from unziplora_pack.unziplora.lora_formats import LoRAState

    return LoRAState(source=f"{side.source}#{source_tag}", fmt=side.weights.format, metadata=side.weights.metadata)


def derive(handle, sides: dict):
    """A copy of `handle` with the given PairSides (name kept, so the Prompts node treats it as the same run)."""
    return replace(handle, **sides)


def random_rows(naive_side, m3_side, rng: np.random.Generator):
    """naive's side with, per layer, a random set of output channels kept: as many as M3's same side keeps there
    (all where M3 keeps all, e.g. its relaxed blocks; none where M3 has no LoRA on that layer)."""
    from unziplora_pack.unziplora.lora_formats import LoRAWeights

    state = _state_like(naive_side, "randmask")
    for path, w in naive_side.weights.items():
        if path not in m3_side.weights:
            continue
        keep = int((m3_side.weights[path].up.float().abs().sum(1) > 0).sum())  # M3's mask, as baked into its file
        rows = torch.zeros(w.out_features, dtype=torch.bool)
        rows[torch.from_numpy(rng.permutation(w.out_features)[:keep])] = True
        state[path] = LoRAWeights(w.down, w.up * rows[:, None].to(w.up.dtype), w.scale, w.key)
    return replace(naive_side, weights=state, mergers={}, masks={})


def average_sides(content, style):
    """One side whose delta is (content + style) / 2 on every layer (rank r_c + r_s, scale folded into up)."""
    from unziplora_pack.unziplora.lora_formats import LoRAWeights

    state = _state_like(content, "average")
    for path in content.weights.keys() | style.weights.keys():
        parts = [(s.weights[path], s) for s in (content, style) if path in s.weights]
        # alpha / rank folded into up; mergers left out, as when a side is used alone (naive's are all ones)
        up = torch.cat([w.up.float() * w.scale / 2 for w, _ in parts], 1)
        down = torch.cat([w.down.float() for w, _ in parts], 0)
        state[path] = LoRAWeights(down, up, 1.0, parts[0][0].key)
    return replace(content, weights=state, mergers={}, masks={})


def kept_fractions(handle) -> dict:
    """Per side: fraction of output channels the file keeps (mask baked into up), overall and per block."""
    out = {}
    for role in ("content", "style"):
        side = getattr(handle, role)
        per_block: dict = {}
        for path, w in side.weights.items():
            block = path.split(".transformer_blocks")[0]
            kept = int((w.up.float().abs().sum(1) > 0).sum())
            a = per_block.setdefault(block, [0, 0])
            a[0] += kept
            a[1] += w.out_features
        total = [sum(v[0] for v in per_block.values()), sum(v[1] for v in per_block.values())]
        out[role] = {"all": total[0] / max(1, total[1]), **{b: v[0] / v[1] for b, v in per_block.items()}}
    return out
