"""Reading LoRA files from the ecosystem into one shape: {LDM path of a linear: LoRAWeights}.

LDM paths are ComfyUI's module names inside the diffusion model, e.g.
"input_blocks.4.1.transformer_blocks.0.attn2.to_k" or "output_blocks.0.1.transformer_blocks.0.attn1.to_out.0".

Formats recognised (per key, so a file mixing them still reads):
    kohya, LDM names          lora_unet_input_blocks_4_1_..._attn1_to_q.lora_down.weight / .lora_up.weight / .alpha
    kohya, diffusers names    lora_unet_down_blocks_1_attentions_0_..._attn1_to_q.lora_down.weight
    ComfyUI generic           diffusion_model.<ldm path>.lora_down.weight / .lora_up.weight
    diffusers / PEFT          unet.<diffusers path>.lora_A.weight / .lora_B.weight
    diffusers, older          unet.<...>.attn1.processor.to_q_lora.down.weight, unet.<...>.to_q.lora.down.weight
    official UnZipLoRA        unet.unet.<diffusers path>.lora.down.weight (diffusers 0.25 prefixes "unet." twice)
    B-LoRA                    any of the above restricted to output_blocks.0.1 / 1.1, split by split_blora()

Kohya names replace every "." by "_", which makes "to_out_0" or "transformer_blocks" ambiguous to parse, so they
are looked up in a table built from the known module paths (comfy.utils.unet_to_diffusers on the UNet config,
plus any LDM paths the caller adds), never split by guesswork.

Pickle-based files (.pt/.pth/.bin, e.g. the official merger files) go through safe_load.load_tensors:
torch.load(weights_only=True) only; a file that needs any other object to unpickle is refused, never executed.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .safe_load import load_tensors

__all__ = ["load_tensors"]  # re-exported: readers and callers share one safe loader

# ComfyUI's detected config for SDXL base (comfy/model_detection.py); only the keys unet_to_diffusers reads matter.
SDXL_UNET_CONFIG = {
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "context_dim": 2048,
}

ATTENTION_LINEARS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
)
CROSS_KV = ("attn2.to_k", "attn2.to_v")

# (suffix, part, naming family). Checked longest first so ".lora_A.default.weight" wins over shorter forms.
_SUFFIXES = sorted(
    [
        (".lora_down.weight", "down", "kohya"), (".lora_up.weight", "up", "kohya"),
        (".lora_A.weight", "down", "peft"), (".lora_B.weight", "up", "peft"),
        (".lora_A.default.weight", "down", "peft"), (".lora_B.default.weight", "up", "peft"),
        ("_lora.down.weight", "down", "attnprocs"), ("_lora.up.weight", "up", "attnprocs"),
        (".lora.down.weight", "down", "diffusers"), (".lora.up.weight", "up", "diffusers"),
        (".lora_linear_layer.down.weight", "down", "diffusers"), (".lora_linear_layer.up.weight", "up", "diffusers"),
        (".lora_layer.down.weight", "down", "diffusers"), (".lora_layer.up.weight", "up", "diffusers"),
        (".alpha", "alpha", None),
        (".dora_scale", "dora", None),
    ],
    key=lambda s: -len(s[0]),
)
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te1.", "te2.", "te.", "lora_text", "clip_l.", "clip_g.",
                          "conditioner.", "cond_stage_model.", "text_model.", "bundle_emb")
_KOHYA_PREFIXES = ("lora_unet_", "lycoris_")
# Longest first: "unet.unet." is the official UnZipLoRA layout and must not be read as "unet." + "unet.<path>".
_DOTTED_PREFIXES = ("unet.unet.", "unet.base_model.model.", "base_model.model.", "model.diffusion_model.",
                    "diffusion_model.", "unet.")


def is_attention_target(path: str) -> bool:
    """True for the 8 attention linears of a transformer block (the only layers UnZipLoRA trains)."""
    head, sep, tail = path.partition(".transformer_blocks.")
    if not sep or not head:
        return False
    index, _, linear = tail.partition(".")
    return index.isdigit() and linear in ATTENTION_LINEARS


@dataclass
class LoRAWeights:
    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    scale: float = 1.0  # alpha / rank; the delta is scale * up @ down
    key: str = ""  # the file's key for `down`, so errors can point at it

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.up.to(dtype) @ self.down.to(dtype)) * self.scale


class LoRAState(dict):
    """{ldm path: LoRAWeights} plus where it came from and what was set aside.

    aside maps a reason to the file keys not used: "text_encoder", "unet_other" (a UNet layer that is not an
    attention linear), "unknown" (LoRA-shaped key whose layer does not exist in the expected UNet: usually a LoRA
    for another architecture), "unsupported" (DoRA), "other" (not a LoRA key at all, e.g. LoHa/LoKr factors).
    """

    def __init__(self, source: str = "<state dict>", fmt: str = "", metadata: Mapping | None = None):
        super().__init__()
        self.source = source
        self.format = fmt
        self.metadata: dict[str, str] = dict(metadata or {})
        self.aside: dict[str, list[str]] = {}

    def summary(self) -> str:
        parts = [f"{len(self)} attention layers ({self.format or 'empty'})"]
        if self.aside:
            parts.append("set aside: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(self.aside.items())))
        return f"{os.path.basename(self.source)}: " + "; ".join(parts)

    def _set_aside(self, reason: str, keys) -> None:
        self.aside.setdefault(reason, []).extend(keys)


# ---------------------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class _NameTable:
    diffusers_to_ldm: dict  # dotted diffusers module -> ldm path
    ldm: frozenset  # known ldm module paths
    kohya: dict  # underscored name -> (ldm path, "ldm" | "diffusers")


@functools.lru_cache(maxsize=8)
def _base_table(config_json: str) -> _NameTable:
    import comfy.utils

    d2l = {}
    for dk, lk in comfy.utils.unet_to_diffusers(json.loads(config_json)).items():
        if dk.endswith(".weight") and lk.endswith(".weight"):
            d2l[dk[: -len(".weight")]] = lk[: -len(".weight")]
    ldm = frozenset(d2l.values())
    kohya = {}
    for name, target, naming in [(p, p, "ldm") for p in sorted(ldm)] + [(d, l, "diffusers") for d, l in d2l.items()]:
        flat = name.replace(".", "_")
        if kohya.get(flat, (target,))[0] != target:
            raise RuntimeError(f"kohya name {flat!r} would map to two layers")  # cannot happen for UNet configs
        kohya.setdefault(flat, (target, naming))
    return _NameTable(d2l, ldm, kohya)


def name_table(unet_config: Mapping | None = None, ldm_paths=()) -> _NameTable:
    base = _base_table(json.dumps(dict(unet_config or SDXL_UNET_CONFIG), sort_keys=True, default=str))
    extra = [p for p in ldm_paths if p not in base.ldm]
    if not extra:
        return base
    kohya = dict(base.kohya)
    for p in extra:
        kohya.setdefault(p.replace(".", "_"), (p, "ldm"))
    return _NameTable(base.diffusers_to_ldm, base.ldm | frozenset(extra), kohya)


def _resolve(module: str, table: _NameTable) -> tuple[str | None, str, str]:
    """(ldm path or None, category, naming label) for a module name with the LoRA suffix removed."""
    if module.startswith(_TEXT_ENCODER_PREFIXES):
        return None, "text_encoder", ""
    for prefix in _KOHYA_PREFIXES:
        if module.startswith(prefix):
            hit = table.kohya.get(module[len(prefix):])
            if hit is None:
                return None, "unknown", ""
            return hit[0], "", f"kohya-{hit[1]}"
    label = ""
    for prefix in _DOTTED_PREFIXES:
        if module.startswith(prefix):
            module = module[len(prefix):]
            label = {"unet.unet.": "unziplora-official", "diffusion_model.": "comfyui"}.get(prefix, "")
            break
    # old attention-processor keys: "...attn1.processor.to_out_lora" names the module "...attn1.to_out.0"
    module = module.replace(".processor.", ".")
    if module.endswith(".to_out"):
        module += ".0"
    if module in table.diffusers_to_ldm:
        return table.diffusers_to_ldm[module], "", label
    if module in table.ldm:
        return module, "", label or "ldm"
    return None, "unknown", ""


# ---------------------------------------------------------------------------------------------------- loading


def _as_source(source, source_name: str | None):
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):  # diffusers' save_lora_weights (and the official script) write a folder
            path = os.path.join(path, "pytorch_lora_weights.safetensors")
        tensors, metadata = load_tensors(path)
        return tensors, metadata, source_name or path
    if isinstance(source, Mapping):
        return dict(source), dict(getattr(source, "metadata", {}) or {}), source_name or "<state dict>"
    raise TypeError(f"expected a file path or a state dict, got {type(source).__name__}")


def _split_key(key: str):
    for suffix, part, family in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part, family
    return None, None, None


def _linear_2d(t: torch.Tensor, key: str, source: str) -> torch.Tensor:
    if t.ndim == 4 and t.shape[2:] == (1, 1):
        t = t.flatten(1)
    if t.ndim != 2:
        raise ValueError(f"{os.path.basename(source)}: key {key!r} has shape {tuple(t.shape)}, expected a 2-D linear factor")
    return t


def read_lora(source, *, unet_config: Mapping | None = None, ldm_paths=(), source_name: str | None = None) -> LoRAState:
    """Read any supported LoRA (path or state dict) into {ldm path: LoRAWeights} for the attention linears.

    Keys that are not attention linears (text encoders, other UNet layers, unknown names) are kept aside in
    result.aside, not treated as errors. Raises ValueError naming the file for broken factors (missing half,
    rank mismatch) or when no attention LoRA weights are found at all.
    """
    if isinstance(source, LoRAState):
        return source
    tensors, metadata, src = _as_source(source, source_name)
    fname = os.path.basename(src)
    table = name_table(unet_config, ldm_paths)
    modules: dict[str, dict[str, tuple[str, torch.Tensor, str | None]]] = {}
    result = LoRAState(src, metadata=metadata)
    for key, t in tensors.items():
        module, part, family = _split_key(key)
        if module is None:
            reason = "text_encoder" if key.startswith(_TEXT_ENCODER_PREFIXES) else "other"
            result._set_aside(reason, [key])
            continue
        modules.setdefault(module, {})[part] = (key, t, family)

    labels = set()
    owner: dict[str, str] = {}
    for module, parts in modules.items():
        keys = [k for k, _, _ in parts.values()]
        path, category, label = _resolve(module, table)
        if path is None:
            result._set_aside(category, keys)
            continue
        if not is_attention_target(path):
            result._set_aside("unet_other", keys)
            continue
        if "dora" in parts:
            result._set_aside("unsupported", keys)
            continue
        if "down" not in parts or "up" not in parts:
            missing = "up" if "down" in parts else "down"
            raise ValueError(f"{fname}: layer {path} (keys {keys}) has no {missing} factor")
        if path in owner:
            raise ValueError(f"{fname}: layer {path} appears twice (modules {owner[path]!r} and {module!r})")
        owner[path] = module
        down_key, down, family = parts["down"]
        up_key, up, _ = parts["up"]
        down, up = _linear_2d(down, down_key, src), _linear_2d(up, up_key, src)
        if down.shape[0] != up.shape[1]:
            raise ValueError(f"{fname}: rank mismatch at {down_key!r}: down {tuple(down.shape)}, up {tuple(up.shape)}")
        scale = 1.0
        if "alpha" in parts:
            alpha_key, alpha, _ = parts["alpha"]
            if not isinstance(alpha, torch.Tensor) or alpha.numel() != 1:
                n = alpha.numel() if isinstance(alpha, torch.Tensor) else type(alpha).__name__
                raise ValueError(f"{fname}: {alpha_key!r} holds {n} values: a LoRA's alpha is one number per layer")
            scale = float(alpha.float().item()) / down.shape[0]
        result[path] = LoRAWeights(down, up, scale, down_key)
        if label == "unziplora-official" and family != "diffusers":
            label = ""
        labels.add(label or {"peft": "diffusers-peft", "attnprocs": "diffusers-attnprocs"}.get(family, "diffusers"))
    result.format = "+".join(sorted(labels))
    if not result:
        raise ValueError(f"{fname}: no UNet attention LoRA weights found ({len(tensors)} keys; "
                         + (", ".join(f"{len(v)} {k}" for k, v in sorted(result.aside.items())) or "none") + ")")
    return result


def split_blora(lora, **read_kwargs) -> tuple[LoRAState, LoRAState]:
    """B-LoRA: one LoRA whose output_blocks.0.1 part is the content and output_blocks.1.1 part the style."""
    from .roles import BLORA_BLOCKS

    state = lora if isinstance(lora, LoRAState) else read_lora(lora, **read_kwargs)
    halves = {}
    for side in ("content", "style"):
        half = LoRAState(state.source, state.format, state.metadata)
        half.aside = {k: list(v) for k, v in state.aside.items()}
        halves[side] = half
    others = []
    for path, w in state.items():
        role = next((r for b, r in BLORA_BLOCKS.items() if path.startswith(b + ".")), None)
        if role is None:
            others.append(w.key)
        else:
            halves[role][path] = w
    for half in halves.values():
        if others:
            half._set_aside("not_blora_block", others)
    if not halves["content"] and not halves["style"]:
        raise ValueError(f"{os.path.basename(state.source)}: not a B-LoRA file: no weights in "
                         + " or ".join(BLORA_BLOCKS))
    return halves["content"], halves["style"]


def read_official_mergers(source, *, unet_config: Mapping | None = None, source_name: str | None = None,
                          expected: Mapping[str, tuple[int, int]] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Official merger files (torch.save of {"unet.<diffusers path>.lora.merge_<side>": vector}) -> {side: {path: t}}.

    With `expected` ({path: (in, out)}), every vector must have one entry per output channel (forks that keep
    rank-sized mergers are refused rather than misapplied).
    """
    tensors, _, src = _as_source(source, source_name)
    table = name_table(unet_config)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        for side in ("content", "style"):
            suffix = f".lora.merge_{side}"
            if key.endswith(suffix):
                path, _, _ = _resolve(key[: -len(suffix)], table)
                if path is None:
                    continue
                if expected is not None and (path not in expected or t.numel() != expected[path][1]):
                    raise ValueError(f"{os.path.basename(src)}: merger {key!r} has {t.numel()} entries; layer {path} "
                                     f"has {expected[path][1] if path in expected else 'no'} output channels here")
                out.setdefault(side, {})[path] = t.flatten()
    if not out:
        raise ValueError(f"{os.path.basename(src)}: no UnZipLoRA merger vectors found ({len(tensors)} keys)")
    return out


# ---------------------------------------------------------------------------------------------------- shapes


def shapes_from_model(model) -> dict[str, tuple[int, int]]:
    """{ldm path: (in, out)} read from a live diffusion model (a ModelPatcher, BaseModel or the UNet itself)."""
    unet = getattr(getattr(model, "model", model), "diffusion_model", getattr(model, "model", model))
    return {name: (int(m.in_features), int(m.out_features)) for name, m in unet.named_modules()
            if is_attention_target(name) and hasattr(m, "in_features")}


def validate_against(lora: LoRAState | Mapping, expected: Mapping[str, tuple[int, int]],
                     source_name: str | None = None) -> None:
    """ValueError naming the file and the first key whose layer is missing from, or shaped unlike, `expected`.

    Keys set aside as "unknown" count as mismatches too: they are LoRA layers this UNet does not have (e.g. SD1.5's
    input_blocks.1.1), the usual sign of a LoRA made for another base model.
    """
    name = os.path.basename(source_name or getattr(lora, "source", "") or "<state dict>")
    hint = " This LoRA was probably made for another base model (SD1.5/SD2 LoRAs do not fit SDXL)."
    for path, w in lora.items():
        if path not in expected:
            raise ValueError(f"{name}: key {w.key or path!r} targets {path}, which this model does not have.{hint}")
        want_in, want_out = expected[path]
        if (w.in_features, w.out_features) != (want_in, want_out):
            raise ValueError(f"{name}: key {w.key or path!r} does not fit layer {path}: the LoRA maps "
                             f"{w.in_features}->{w.out_features}, the model {want_in}->{want_out}.{hint}")
    unknown = getattr(lora, "aside", {}).get("unknown", [])
    if unknown:
        raise ValueError(f"{name}: key {unknown[0]!r} names a layer this model does not have "
                         f"({len(unknown)} such keys).{hint}")
